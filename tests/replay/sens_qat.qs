# qscope session
# version 0.1.0
# date 2026-12-02T02:37:39Z
# seed 0
# threads 2
# model datasets/models/digits-mlp.safetensors sha256=8801f2401b8715a750614a4e54581c24602be01fdd510aaaa862358145d47beb
# data datasets/digits.csv sha256=d7ff1341011182b7af3733b201a919cea2ffe00f25ff23ba48c5e791daffb498
# split rows, seed 0: train 1078 / calibration 359 (using 359; set calib N counts rows) / held-out test 360 (at the end of the session)
# Was the text golden tests/golden/sens_qat.qs: its point is the numbers, so it is a session
# replayed with --check (tests/run.sh); tests/golden/render.qs keeps the text layouts.
# Re-record after a deliberate change: tests/tools/rerecord.py tests/replay/sens_qat.qs
load model datasets/models/digits-mlp.safetensors
# => path=datasets/models/digits-mlp.safetensors
# => layers=3
# => params=8970
load data datasets/digits.csv
# => path=datasets/digits.csv
# => n=1797
# => features=64
# => classes=10
set seed 0
# => seed=0
quant * int3 gran=tensor clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int3
# => matched=3
# => bits_per_weight=3.00543478
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.972222222
# => float.loss=0.119297904
# => quant.acc=0.752777778
# => quant.loss=0.96262119
# => kl=0.845593491
# => top1_agree=0.763888889
# => bits_per_weight=3.00543478
# => gate=pass
# => gate_threshold=0.825
qat epochs=10 lr=0.0003 batch=64 seed=0
# => epochs=10
# => lr=0.0003
# => float.acc=0.972222222
# => float.loss=0.119297904
# => ptq.acc=0.752777778
# => ptq.loss=0.96262119
# => qat.acc=0.958333333
# => qat.loss=0.12639588
# => qat_float.acc=0.863888889
# => qat_float.loss=0.486649921
# => gap_closed=0.936708861
# => task.float_acc=0.863888889
# => task.threshold=0.825
# => gate=pass
# => regime=weight-only
eval
# => regime=weight-only
# => split.seed=0
# => split.train=1078
# => split.calib=359
# => split.test=360
# => float.acc=0.863888889
# => float.loss=0.486649921
# => quant.acc=0.958333333
# => quant.loss=0.12639588
# => kl=0.995130793
# => top1_agree=0.863888889
# => bits_per_weight=3.00543478
# => gate=pass
# => gate_threshold=0.825
# end of session (7 commands)
