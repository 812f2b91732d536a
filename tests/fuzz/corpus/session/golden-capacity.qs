# args: --no-default
# a deliberately capacity-adding correction: the last layer of an undertrained model mapped to a
# well-trained teacher's logits lifts the float model too, so the ablation calls it capacity
load data datasets/digits.csv
train hidden=16,16 epochs=2 seed=1
quant * int8 gran=channel
correct fc2 linear teacher=datasets/models/digits-mlp.safetensors
ablate
correct fc2 linear
ablate
