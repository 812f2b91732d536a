# args: --no-default --json
load model datasets/models/digits-mlp.safetensors
load data datasets/digits.csv
# the same as resid_lowrank.qs as JSON Lines: sv_resid beside sv, and resid
quant * int4 gran=channel
correct fc1 lowrank r=8
correct fc2 bias
spectrum fc1 k=12
spectrum fc2 k=4
rank
