# args: --no-default
load model datasets/models/digits-mlp.safetensors
load data datasets/digits.csv
# the residual W - (Q(W) + C) beside the error: LoRC r=8 removes exactly the top 8 singular
# values (sigma(resid)_i = sigma(error)_(i+8)); a bias correction acts on the outputs
quant * int4 gran=channel
correct fc1 lowrank r=8
correct fc2 bias
spectrum fc1 k=12
spectrum fc2 k=4
rank
