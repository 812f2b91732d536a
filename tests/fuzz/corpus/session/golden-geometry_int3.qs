# args: --no-default
load model datasets/models/digits-mlp.safetensors
load data datasets/digits.csv
# error geometry at int3 per-tensor, weight-only: where is the error, what shape has it
quant * int3 gran=tensor
error
rank
rank of=preact
rank of=weight scale=act
rank of=weight scale=cov
spectrum fc1 k=8
spectrum fc1 of=preact k=8
spectrum fc0 scale=cov k=4
