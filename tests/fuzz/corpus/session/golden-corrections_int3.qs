# args: --no-default
load model datasets/models/digits-mlp.safetensors
load data datasets/digits.csv
# each correction on each layer alone at int3 per-tensor; R on the held-out split
quant * int3 gran=tensor
correct fc0 bias
correct fc0 lowrank r=8
correct fc0 lqer r=8
correct fc0 qera r=8
correct fc0 eora r=8
correct fc0 linear
correct fc0 linear prec=int8
correct fc0 linear prec=int4
correct fc0 clocal
uncorrect fc0
correct fc1 bias
correct fc1 lowrank r=8
correct fc1 lqer r=8
correct fc1 qera r=8
correct fc1 eora r=8
correct fc1 linear
correct fc1 linear prec=int8
correct fc1 linear prec=int4
correct fc1 clocal
uncorrect fc1
correct fc2 bias
correct fc2 lowrank r=8
correct fc2 lqer r=8
correct fc2 qera r=8
correct fc2 eora r=8
correct fc2 linear
correct fc2 linear prec=int8
correct fc2 linear prec=int4
correct fc2 clocal
uncorrect fc2
correct fc0 qera r=8
correct fc2 linear
layers
ablate
