# qscope session
# version 0.1.0
# date 2026-12-02T02:36:17Z
# seed 0
# threads 2
# model datasets/models/digits-mlp.safetensors sha256=8801f2401b8715a750614a4e54581c24602be01fdd510aaaa862358145d47beb
# data datasets/digits.csv sha256=d7ff1341011182b7af3733b201a919cea2ffe00f25ff23ba48c5e791daffb498
# split rows, seed 0: train 1078 / calibration 359 (using 359; set calib N counts rows) / held-out test 360 (at the end of the session)
# Was the text golden tests/golden/eval_formats.qs: its point is the numbers, so it is a session
# replayed with --check (tests/run.sh); tests/golden/render.qs keeps the text layouts.
# Re-record after a deliberate change: tests/tools/rerecord.py tests/replay/eval_formats.qs
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
quant * int8 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int8
# => matched=3
# => bits_per_weight=8.25
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.972222222
# => quant.loss=0.119503393
# => kl=8.53719087e-05
# => top1_agree=1
# => bits_per_weight=8.25
# => gate=pass
# => gate_threshold=0.825
quant * int4 gran=group:32 clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int4
# => matched=3
# => bits_per_weight=4.5
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.961111111
# => quant.loss=0.122016699
# => kl=0.0268840908
# => top1_agree=0.975
# => bits_per_weight=4.5
# => gate=pass
# => gate_threshold=0.825
quant * fp8-e4m3 gran=channel clip=max round=nearest sat=1 scale=f16
# => pattern=*
# => format=fp8-e4m3
# => matched=3
# => bits_per_weight=8.25
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.972222222
# => quant.loss=0.128553485
# => kl=0.00236253853
# => top1_agree=0.994444444
# => bits_per_weight=8.25
# => gate=pass
# => gate_threshold=0.825
quant * mxfp4 clip=max round=nearest
# => pattern=*
# => format=mxfp4
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
# => quant.acc=0.961111111
# => quant.loss=0.158997125
# => kl=0.0402524236
# => top1_agree=0.975
# => bits_per_weight=4.25
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
quant * nf4 gran=group:64 clip=max round=nearest scale=f16
# => pattern=*
# => format=nf4
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
# => quant.acc=0.952777778
# => quant.loss=0.140286689
# => kl=0.0531105319
# => top1_agree=0.972222222
# => bits_per_weight=4.25
# => gate=pass
# => gate_threshold=0.825
quant * int3 gran=tensor clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int3
# => matched=3
# => bits_per_weight=3.00543478
quant fc2 int8 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=fc2
# => format=int8
# => matched=1
# => bits_per_weight=3.38405797
regime full
# => regime=weight+activation
quant * int8 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int8
# => matched=3
# => bits_per_weight=8.25
eval
# => regime=weight+activation
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.975
# => quant.loss=0.120151857
# => kl=0.000393164019
# => top1_agree=0.997222222
# => bits_per_weight=8.25
# => gate=pass
# => gate_threshold=0.825
error
# => task.float_acc=0.972222222
# => task.threshold=0.825
# => gate=pass
# => regime=weight+activation
# => layers[0].name=fc0
# => layers[0].w_rel_err=0.00424695614
# => layers[0].preact_rel_mse=2.86139902e-05
# => layers[0].snr_db=45.4342158
# => layers[0].local_rel_mse=2.86139902e-05
# => layers[0].local_snr_db=45.4342158
# => layers[0].cosine=0.999985899
# => layers[0].kl_alone=4.26531289e-05
# => layers[0].kl_share=0.124989662
# => layers[0].w_only=1.97876805e-05
# => layers[0].a_only=8.73758812e-06
# => layers[0].interaction=8.87215893e-08
# => layers[1].name=fc1
# => layers[1].w_rel_err=0.00454529424
# => layers[1].preact_rel_mse=9.18182819e-05
# => layers[1].snr_db=40.3707084
# => layers[1].local_rel_mse=6.37568939e-05
# => layers[1].local_snr_db=41.9547285
# => layers[1].cosine=0.999954126
# => layers[1].kl_alone=0.000112169806
# => layers[1].kl_share=0.328699594
# => layers[1].w_only=1.96634691e-05
# => layers[1].a_only=4.42752328e-05
# => layers[1].interaction=-1.81807941e-07
# => layers[2].name=fc2
# => layers[2].w_rel_err=0.00529154733
# => layers[2].preact_rel_mse=0.000410355423
# => layers[2].snr_db=33.8683982
# => layers[2].local_rel_mse=0.00020554044
# => layers[2].local_snr_db=36.8710272
# => layers[2].cosine=0.999795288
# => layers[2].kl_alone=0.000186430319
# => layers[2].kl_share=0.546310744
# => layers[2].w_only=5.54948448e-05
# => layers[2].a_only=0.000149407016
# => layers[2].interaction=6.38579146e-07
# end of session (21 commands)
