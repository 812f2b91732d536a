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
