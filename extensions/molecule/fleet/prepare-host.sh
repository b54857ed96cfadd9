#!/usr/bin/env bash
# Run by tests/run on the test machine before this scenario: build and save the fixture images.
exec "$(dirname "${BASH_SOURCE[0]}")/../../../tests/fixtures/build_images.sh"
