#!/bin/sh
# The example project's test: the greeting must be the expected one.
expected="Hello, world!"
got=$(./build/hello)
echo "expected: $expected"
echo "got:      $got"
[ "$got" = "$expected" ] && echo "PASS" || { echo "FAIL"; exit 1; }
