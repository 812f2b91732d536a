# qscope session
# version 0.1.0
# date 2026-11-23T18:47:18Z
# seed 0
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
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.972222222
# => quant.loss=0.119297904
# => kl=0
# => top1_agree=1
# => bits_per_weight=32
# => gate=pass
# => gate_threshold=0.825
quant * int8 gran=tensor clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int8
# => matched=3
# => bits_per_weight=8.00543478
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.972222222
# => quant.loss=0.117844081
# => kl=0.000211389786
# => top1_agree=1
# => bits_per_weight=8.00543478
# => gate=pass
# => gate_threshold=0.825
quant * int4 gran=tensor clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int4
# => matched=3
# => bits_per_weight=4.00543478
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.922222222
# => quant.loss=0.22547722
# => kl=0.112294343
# => top1_agree=0.941666667
# => bits_per_weight=4.00543478
# => gate=pass
# => gate_threshold=0.825
quant * int4 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int4
# => matched=3
# => bits_per_weight=4.25
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.947222222
# => quant.loss=0.142718571
# => kl=0.041433732
# => top1_agree=0.963888889
# => bits_per_weight=4.25
# => gate=pass
# => gate_threshold=0.825
quant * int4 gran=group:16 clip=mse round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int4
# => matched=3
# => bits_per_weight=5
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.969444444
# => quant.loss=0.123257818
# => kl=0.0199170082
# => top1_agree=0.980555556
# => bits_per_weight=5
# => gate=pass
# => gate_threshold=0.825
quant fc2 int8 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=fc2
# => format=int8
# => matched=1
# => bits_per_weight=5.23550725
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.966666667
# => quant.loss=0.128595908
# => kl=0.0207419574
# => top1_agree=0.977777778
# => bits_per_weight=5.23550725
# => gate=pass
# => gate_threshold=0.825
quant * fp8-e4m3 gran=tensor clip=max round=nearest sat=1 scale=f16
# => pattern=*
# => format=fp8-e4m3
# => matched=3
# => bits_per_weight=8.00543478
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.972222222
# => quant.loss=0.124458133
# => kl=0.00572285406
# => top1_agree=0.994444444
# => bits_per_weight=8.00543478
# => gate=pass
# => gate_threshold=0.825
quant * nvfp4 clip=max round=nearest
# => pattern=*
# => format=nvfp4
# => matched=3
# => bits_per_weight=4.51086957
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.961111111
# => quant.loss=0.151888648
# => kl=0.035308034
# => top1_agree=0.980555556
# => bits_per_weight=4.51086957
# => gate=pass
# => gate_threshold=0.825
regime full
# => regime=weight+activation
quant * int8 gran=tensor clip=max round=nearest range=restricted sym scale=f16 on=wa
# => pattern=*
# => format=int8
# => matched=3
# => bits_per_weight=8.00543478
eval
# => regime=weight+activation
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.975
# => quant.loss=0.118506629
# => kl=0.000336910816
# => top1_agree=0.997222222
# => bits_per_weight=8.00543478
# => gate=pass
# => gate_threshold=0.825
# end of session (20 commands)
