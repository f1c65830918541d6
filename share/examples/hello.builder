# The demo's builder: build and test the example project on every commit.
[Builder]
Description=Build and test hello
Repository=@REPOSITORY@
Branches=main release-*
PollIntervalSec=1
TreeStableSec=0
Workers=*
# The steps run as buildunits-build in the builder's sandbox, a transient
# unit (buildunits-build-hello-sandbox-WORKER.service); these bound it further.
LimitNOFILE=1024
TasksMax=256
PrivateNetwork=yes

[Step compile]
Description=build the program
Command=make
HaltOnFailure=yes

[Step test]
Description=run the tests
Command=make test
TimeoutSec=600
