# The demo's hook-only builder: not polled (PollIntervalSec=0); its pushes
# are announced by the webhook receiver (buildunits-webhook(8)).
[Builder]
Description=Build the web site on each announced push
Repository=@REPOSITORY@
PollIntervalSec=0

[Step build]
Command=test -f index.html && echo "site built from $BUILDUNITS_PROPERTY_forge push"
