# qscope session
# version 0.1.0
# date 2026-11-23T18:47:18Z
# seed 7
# threads 2
# model datasets/models/digits-mlp.safetensors sha256=8801f2401b8715a750614a4e54581c24602be01fdd510aaaa862358145d47beb
# data datasets/digits.csv sha256=d7ff1341011182b7af3733b201a919cea2ffe00f25ff23ba48c5e791daffb498
load model datasets/models/digits-mlp.safetensors
# => path=datasets/models/digits-mlp.safetensors
# => layers=3
# => params=8970
load data datasets/digits.csv
# => path=datasets/digits.csv
# => n=1797
# => features=64
# => classes=10
set seed 7
# => seed=7
quant * int3 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int3
# => matched=3
# => bits_per_weight=3.25
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.816666667
# => quant.loss=0.623244427
# => kl=0.560225229
# => top1_agree=0.825
# => bits_per_weight=3.25
# => gate=pass
# => gate_threshold=0.825
quant * none
# => pattern=*
# => format=none
# => matched=3
# => bits_per_weight=32
quant fc0 int3 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=fc0
# => format=int3
# => matched=1
# => bits_per_weight=18.6666667
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.944444444
# => quant.loss=0.194709717
# => kl=0.0789122209
# => top1_agree=0.963888889
# => bits_per_weight=18.6666667
# => gate=pass
# => gate_threshold=0.825
quant * none
# => pattern=*
# => format=none
# => matched=3
# => bits_per_weight=32
quant fc1 int3 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=fc1
# => format=int3
# => matched=1
# => bits_per_weight=18.6666667
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.944444444
# => quant.loss=0.18587332
# => kl=0.0713421799
# => top1_agree=0.955555556
# => bits_per_weight=18.6666667
# => gate=pass
# => gate_threshold=0.825
quant * none
# => pattern=*
# => format=none
# => matched=3
# => bits_per_weight=32
quant fc2 int3 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=fc2
# => format=int3
# => matched=1
# => bits_per_weight=29.9166667
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.908333333
# => quant.loss=0.315732465
# => kl=0.233840726
# => top1_agree=0.905555556
# => bits_per_weight=29.9166667
# => gate=pass
# => gate_threshold=0.825
quant * int3 gran=channel clip=max round=stochastic seed=7 range=restricted sym scale=f16
# => pattern=*
# => format=int3
# => matched=3
# => bits_per_weight=3.25
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.813888889
# => quant.loss=0.770191918
# => kl=0.677004853
# => top1_agree=0.816666667
# => bits_per_weight=3.25
# => gate=pass
# => gate_threshold=0.825
# end of session (16 commands)
