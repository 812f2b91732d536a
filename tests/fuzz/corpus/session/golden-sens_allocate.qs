# args: --no-default
# allocate bits=: uniform int4 per channel (4.25 bits/weight) loses 2.5 points of accuracy on
# digits; the plan under the same budget loses less at fewer bits/weight. allocate rank= then
# spreads 16 units of correction rank and applies them as ordinary correct commands.
load model datasets/models/digits-mlp.safetensors
load data datasets/digits.csv
set seed 0
quant * int4 gran=channel
eval
allocate bits=4.25 formats=int2,int3,int4,int5,int8,int2/tensor,int3/tensor,int4/tensor,int5/tensor,int8/tensor apply
rules
eval
quant * int3 gran=channel
allocate bits=3.25 formats=int2,int3,int4,int8,int2/tensor,int3/tensor,int4/tensor,int8/tensor
quant * int3
allocate rank=16 method=qera apply
eval
