# args: --no-default
load model datasets/models/digits-mlp.safetensors
load data datasets/digits.csv
# activation-only quantization: dynamic per-tensor, per-token, static calibrated, groups, MX
regime act
quant * int8
layers
eval
quant * int8 amode=token
eval
quant * int8 amode=static
eval
quant * int4 amode=token
eval
error
quant * int4 gran=group:16
layers
eval
quant * mxfp8
eval
# weights and activations together, with the three-way attribution of the local error
regime full
quant * int4 gran=channel amode=token
layers
eval
error
