#!/bin/sh
# Starts the server as this version of the app: testsrv answers GET / with
# "hello from $RELEASE" and an X-Release header, GET /health with 200, and
# finishes the requests in flight when it gets SIGTERM.
read -r RELEASE </app/VERSION
export RELEASE
exec /testsrv
