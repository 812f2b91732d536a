# args: --no-default
# set memory and set heldout (issue 14): what they print, how info and eval state them. The
# numbers of the capped runs are checked against an independent split in tests/sh/settings.sh.
set memory
set memory weights=0 acts=64M
load model datasets/models/tiny-gpt2
load data datasets/text/licenses.txt
set heldout
set heldout 4
quant * int4
eval
info
set memory weights=100K
set heldout tokens=130
set heldout all
eval
set memory
