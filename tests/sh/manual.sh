#!/usr/bin/env bash
# tests/sh/manual.sh - the manual pages lint clean and list every command of the command table.
# The list comes from the running binary (`qscope --json -c help`), so a command added to any
# table without a manual entry fails here. Prints PASS/FAIL lines.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d /tmp/qscope-manual.XXXXXX)
trap 'rm -rf "$T"' EXIT

if command -v mandoc >/dev/null 2>&1; then
  mandoc -Tlint man/qscope.1 man/qscope-session.5 >"$T/lint" 2>&1
  if [ -s "$T/lint" ]; then
    echo "FAIL manual.lint: $(head -3 "$T/lint" | tr '\n' ' ')"
  else
    echo "PASS manual.lint"
  fi
else
  echo "FAIL manual.lint: mandoc is not installed (make deps)"
fi

# Command names from the table, one per line. The JSON has "name":"..." only for commands.
./qscope --no-default --json -c help >"$T/help.json" 2>"$T/help.err"
grep -o '"name":"[^"]*"' "$T/help.json" | sed 's/^"name":"//; s/"$//' >"$T/names"
n=$(wc -l <"$T/names")
if [ "$n" -lt 10 ]; then
  echo "FAIL manual.command_list: only $n command names from 'qscope --json -c help'"
  exit 0
fi
missing=""
while IFS= read -r name; do
  # an ".It Cm NAME" entry, NAME followed by an argument macro or the end of the line
  if ! grep -qE "^\.It Cm ${name}( |\$)" man/qscope.1; then
    missing="$missing '$name'"
  fi
done <"$T/names"
if [ -n "$missing" ]; then
  echo "FAIL manual.every_command: no '.It Cm NAME' entry in man/qscope.1 for:$missing"
else
  echo "PASS manual.every_command ($n commands)"
fi

# Front-end commands exist only in the TUI's table; the manual documents them too.
for name in screenshot; do
  if grep -qE "^\.It Cm ${name}( |\$)" man/qscope.1; then
    echo "PASS manual.front_$name"
  else
    echo "FAIL manual.front_$name"
  fi
done

# Every option of the usage text is documented.
./qscope --help >"$T/usage"
missing=""
for opt in $(grep -oE '(^| )--?[a-z][a-z-]*' "$T/usage" | tr -d ' ' | sort -u); do
  case $opt in
    -|--) continue ;;
  esac
  # mdoc writes --json as "Fl -json" and -c as "Fl c"
  if ! grep -qE "Fl ${opt#-}( |\$)" man/qscope.1; then
    missing="$missing $opt"
  fi
done
if [ -n "$missing" ]; then
  echo "FAIL manual.every_option: undocumented:$missing"
else
  echo "PASS manual.every_option"
fi

# The session format page describes what qs_session_write writes.
for key in '# qscope session' '# version' '# date' '# seed' '# threads' '# model' '# data' \
  '# => name=value' '# end of session' '# closed'; do
  if ! grep -qF -- "$key" man/qscope-session.5; then
    echo "FAIL manual.session_format: '$key' is not described in qscope-session.5"
    exit 0
  fi
done
echo "PASS manual.session_format"
