# The demo's dependent builder: after each successful build of hello, the
# same revision is "packaged" (After=, buildunits.builder(5)).
[Builder]
Description=Package hello after it passed
After=hello
AfterResult=success

[Step package]
Description=package the revision hello built
Command=echo "packaging hello at $BUILDUNITS_REVISION"
