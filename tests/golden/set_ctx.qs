# args: --no-default
# set ctx (issue 14): what it prints, how info and eval state it. The losses at ctx 32 are
# checked against a float64 PyTorch forward in tests/sh/lm_ctx.sh.
load model datasets/models/tiny-gpt2
load data datasets/text/licenses.bin
set ctx
set calib tokens=512
set ctx 32
info
eval
set ctx model
eval
