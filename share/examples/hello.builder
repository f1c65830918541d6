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

# Who hears about its builds (buildunits-notifier(8)): here, as by
# default, of those that fail or end in an exception.  The mail goes
# through the local MTA, or to SMTPServer= of buildunits.conf; the
# command runs, under systemd, in a transient unit of its own
# (buildunits-notify-hello-NUMBER-0.service) as buildunits-build, its
# output in the journal.
[Notify]
Notify=failing exception
Mail=dev@example.org
ExecNotify=echo "ExecNotify: $BUILDUNITS_BUILDER #$BUILDUNITS_NUMBER $BUILDUNITS_RESULT on $BUILDUNITS_BRANCH, run as $(id -un)"
