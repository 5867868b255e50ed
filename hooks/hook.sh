#!/bin/sh
# A CodeDeploy hook: the handoff executable beside this file runs the step this file is named
# after (hooks/application-start runs `handoff application-start`; --help there says more).
exec "$(dirname "$0")/handoff" "$(basename "$0")" "$@"
