#!/usr/bin/env bash
# tests/sh/manual.sh - the manual pages lint clean and list every command of the command table.
# The list comes from the running binary (`qscope --json -c help`), so a command added to any
# table without a manual entry fails here. Prints PASS/FAIL lines.
set -u
cd "$(dirname "$0")/../.."
T=$(mktemp -d /tmp/qscope-manual.XXXXXX)
trap 'rm -rf "$T"' EXIT

if command -v mandoc >/dev/null 2>&1; then
  mandoc -Tlint man/qscope.1 man/qscope-session.5 man/qscope-methods.7 >"$T/lint" 2>&1
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

# qscope-methods(7): the definitions page names every format the binary accepts (the list comes
# from its own error message, so a format added to the table without a definition fails here),
# every verdict and method it documents a rule for, and `help` and qscope(1) point to it.
if command -v mandoc >/dev/null 2>&1; then
  MANWIDTH=200 mandoc -Tascii man/qscope-methods.7 2>/dev/null | sed 's/.\x08//g' >"$T/methods.txt"
  ./qscope --no-default -c 'codes no-such-format' >/dev/null 2>"$T/fmt.err"
  fmts=$(sed -n 's/.*valid: //p' "$T/fmt.err" | tr -d ',')
  missing=""
  nf=0
  for f in $fmts; do
    nf=$((nf + 1))
    case $f in
      none) continue ;;
      int[2-8]) grep -qF 'int2 ... int8' "$T/methods.txt" && continue ;;
    esac
    grep -qF -- "$f" "$T/methods.txt" || missing="$missing $f"
  done
  if [ "$nf" -lt 20 ]; then
    echo "FAIL manual.methods_formats: only $nf format names from the binary's error message"
  elif [ -n "$missing" ]; then
    echo "FAIL manual.methods_formats: not defined in qscope-methods.7:$missing"
  else
    echo "PASS manual.methods_formats ($nf formats)"
  fi
  missing=""
  for w in supported refuted unclear no-gain capacity recovery white structured \
    bias lowrank lqer qera eora linear clocal delta grad fisher hutchinson \
    correctability R_lin_float R_lin_q4 'bits/weight' 'Marchenko' 'Tracy' 'R-operator' \
    Rademacher 'paired bootstrap' 'W - (Q(W) + C)' 'tr(G) / d' Perplexity 'Top-1 agreement' \
    'LM gate' 'overnight report' 'not distributed with qscope'; do
    grep -qF -- "$w" "$T/methods.txt" || missing="$missing '$w'"
  done
  if [ -n "$missing" ]; then
    echo "FAIL manual.methods_terms: not in qscope-methods.7:$missing"
  else
    echo "PASS manual.methods_terms"
  fi
else
  echo "FAIL manual.methods_formats: mandoc is not installed (make deps)"
fi
# man(1) on most Linux systems renders with groff, whose mdoc is stricter than mandoc about words
# that are also macro names (an author called "Li" opens a literal): the page must render whole.
if command -v groff >/dev/null 2>&1; then
  groff -mdoc -Tutf8 -ww -z man/qscope-methods.7 >"$T/groff" 2>&1
  if [ -s "$T/groff" ]; then
    echo "FAIL manual.methods_groff: $(head -3 "$T/groff" | tr '\n' ' ')"
  else
    echo "PASS manual.methods_groff"
  fi
else
  echo "FAIL manual.methods_groff: groff is not installed (make deps installs groff-base)"
fi
if ./qscope --no-default -c help 2>/dev/null | tail -1 | grep -q 'man qscope-methods'; then
  echo "PASS manual.help_points_to_methods"
else
  echo "FAIL manual.help_points_to_methods: the last line of 'help' does not name qscope-methods"
fi
if sed -n '/^\.Sh SEE ALSO/,$p' man/qscope.1 | grep -q 'qscope-methods(7)'; then
  echo "PASS manual.see_also_methods"
else
  echo "FAIL manual.see_also_methods: qscope.1 SEE ALSO does not list qscope-methods(7)"
fi
