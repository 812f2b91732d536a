# args: --no-default
# qat at int3 per tensor on digits: straight-through fine-tuning closes most of the PTQ gap.
load model datasets/models/digits-mlp.safetensors
load data datasets/digits.csv
set seed 0
quant * int3
eval
qat epochs=10 lr=3e-4
eval
