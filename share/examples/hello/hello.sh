#!/bin/sh
# hello: the example project buildunits' demo builds.
echo "Hello, world!"
