# args: --no-default
load model datasets/models/digits-mlp.safetensors
load data datasets/digits.csv
# quantizer methods as options of quant: the rule shows its method, the layers table the
# method's weights, error / spectrum / corrections read them unchanged
quant * int3 gran=channel method=gptq
rules
layers
error
spectrum fc1 scale=cov k=4
correct fc1 lqer r=4
quant fc2 int4 gran=group:32 weight=imatrix
quant fc0 int3 gran=channel method=awq inputs=float
rules
layers
error
quant * int3 gran=channel rotate=hadamard
layers
regime full
quant * int4 gran=channel amode=static smooth=0.5
rules
layers
eval
