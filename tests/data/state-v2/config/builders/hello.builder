# The demo's builder: build and test the example project on every commit.
[Builder]
Description=Build and test hello
Repository=/tmp/runner-corpus/hello.git
Branches=main release-*
PollIntervalSec=1
TreeStableSec=0
Workers=*

[Step compile]
Description=build the program
Command=make
HaltOnFailure=yes

[Step test]
Description=run the tests
Command=make test
TimeoutSec=600
