# The demo's dependent builder: after each successful build of hello, the
# same revision is built again and packaged (After=, buildunits.builder(5)).
# The tarball is the build's artifact (Artifacts=): listed on its page,
# linked from the site, and builders/package/latest/ leads to the newest.
[Builder]
Description=Package hello after it passed
Repository=@REPOSITORY@
# Not polled, and no branch of its own: built only after hello passed.
PollIntervalSec=0
Branches=
After=hello
AfterResult=success
Artifacts=dist/hello.tar.gz

[Step package]
Description=package the revision hello built
Command=make && mkdir -p dist && tar -czf dist/hello.tar.gz build/hello && echo "packaged hello at $BUILDUNITS_REVISION"
