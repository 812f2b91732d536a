# args: --no-default
# the bundled byte-level LLaMA (RMSNorm, RoPE, SwiGLU, 2 kv heads for 4 query heads, untied head)
load model datasets/models/tiny-llama
load data datasets/text/licenses.bin
layers
eval
quant * nf4
eval
quant *proj mxfp4
quant lm_head int8 gran=channel
eval
rank
spectrum lm_head k=8
spectrum model.layers.0.mlp.down_proj scale=cov k=6
# low-rank corrections of the sites' weight errors, judged on held-out windows
quant * int3 gran=channel
eval
correct lm_head lowrank r=4
correct lm_head qera r=4
correct *proj eora r=4
layers
uncorrect *
eval
