# args: --no-default
load model datasets/models/digits-mlp.safetensors
load data datasets/digits.csv
# float vs quantized across formats (weight-only), then weight+activation
eval
quant * int8 gran=channel
eval
quant * int4 gran=group:32
eval
quant * fp8-e4m3 gran=channel
eval
quant * mxfp4
eval
quant * nvfp4
eval
quant * nf4
eval
quant * int3 gran=tensor
layers
quant fc2 int8 gran=channel
rules
regime full
quant * int8 gran=channel
eval
error
