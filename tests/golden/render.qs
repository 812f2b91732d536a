# args: --no-default
# The text golden of the renderers: every command's text layout once (numbers are checked by the
# sessions in tests/replay/, replayed with --check; this file checks how they are shown).
load model datasets/models/digits-mlp.safetensors
load data datasets/digits.csv
info
layers
eval
quant * int3 gran=channel
quant fc2 int8 gran=channel method=gptq
rules
layers
eval
error
rank
rank of=preact
spectrum fc1 k=4
spectrum fc1 of=preact k=4
correct fc1 lqer r=4
correct fc0 linear
ablate
sensitivity
allocate bits=4.25 formats=int3,int4,int8
regime full
quant * int4 gran=channel amode=token
layers
error
set seed 0
qat epochs=1 lr=3e-4
study q1 models=datasets/models/moons-mlp.safetensors:datasets/moons.csv seeds=2 prec=int8 format=int4 gran=channel
train hidden=16,16 epochs=2 seed=1
eval
error
regime weight
quant * none
load model datasets/models/tiny-gpt2
load data datasets/text/licenses.txt
info
layers
eval
quant * int4 gran=group:32
error h.0.*
rank h.0*
correct h.0.mlp.c_proj lqer r=4
