# args: --no-default
# the bundled byte-level GPT-2 on its held-out text: formats, per-site error geometry
load model datasets/models/tiny-gpt2
load data datasets/text/licenses.txt
info
layers
eval
quant * int8 gran=channel
eval
quant * int4 gran=group:32
eval
error
rank h.0*
spectrum h.0.mlp.c_proj scale=act k=6
quant * int4 gran=channel on=wa amode=token
quant lm_head none on=wa
rules
eval
error h.1.*
rank h.0* of=preact
spectrum h.1.mlp.c_proj of=preact k=5
