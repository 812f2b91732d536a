# qscope session
# version 0.1.0
# date 2026-12-02T02:36:17Z
# seed 0
# threads 2
# data datasets/digits.csv sha256=d7ff1341011182b7af3733b201a919cea2ffe00f25ff23ba48c5e791daffb498
# split rows, seed 0: train 1078 / calibration 359 (using 359; set calib N counts rows) / held-out test 360 (at the end of the session)
# Was the text golden tests/golden/capacity.qs: its point is the numbers, so it is a session
# replayed with --check (tests/run.sh); tests/golden/render.qs keeps the text layouts.
# Re-record after a deliberate change: tests/tools/rerecord.py tests/replay/capacity.qs
load data datasets/digits.csv
# => path=datasets/digits.csv
# => n=1797
# => features=64
# => classes=10
train hidden=16,16 epochs=2 batch=64 lr=0.001 wd=0 act=relu seed=1
# => test_acc=0.127777778
# => test_loss=3.54410985
# => gate=fail
quant * int8 gran=channel clip=max round=nearest range=restricted sym scale=f16
# => pattern=*
# => format=int8
# => matched=3
# => bits_per_weight=8.46666667
correct fc2 linear prec=float teacher=datasets/models/digits-mlp.safetensors
# => layer=fc2
# => method=linear
# => rank=0
# => prec=float
# => recovery=-32269.853
# => recovery_calib=-31224.0304
# => params=110
# => bits_added=3520
# => layer_bits_per_weight=31
# => lambda=0.00149839159
# => rank_kept=10
# => quant_acc=0.488888889
# => task.float_acc=0.127777778
# => task.threshold=0.825
# => gate=fail
# => regime=weight-only
ablate
# => layer=fc2
# => method=linear
# => float.acc=0.127777778
# => float.loss=3.54410985
# => quant.acc=0.125
# => quant.loss=3.54154769
# => quant_corrected.acc=0.488888889
# => quant_corrected.loss=1.96771635
# => float_corrected.acc=0.488888889
# => float_corrected.loss=1.96863913
# => random_control.acc=0.0888888889
# => random_control.loss=14.7197192
# => gain_quant.mean=1.57383135
# => gain_quant.lo=1.28122061
# => gain_quant.hi=1.88602374
# => gain_float.mean=1.57547071
# => gain_float.lo=1.27181829
# => gain_float.hi=1.87098532
# => gain_random.mean=-11.1781715
# => gain_random.lo=-12.2595448
# => gain_random.hi=-9.98751939
# => other_layer_significant=false
# => verdict=capacity
# => task.float_acc=0.127777778
# => task.threshold=0.825
# => gate=fail
# => regime=weight-only
correct fc2 linear prec=float
# => layer=fc2
# => method=linear
# => rank=0
# => prec=float
# => recovery=0.556905014
# => recovery_calib=0.577587291
# => params=110
# => bits_added=3520
# => layer_bits_per_weight=31
# => lambda=0.00149839159
# => rank_kept=10
# => quant_acc=0.130555556
# => task.float_acc=0.127777778
# => task.threshold=0.825
# => gate=fail
# => regime=weight-only
ablate
# => layer=fc2
# => method=linear
# => float.acc=0.127777778
# => float.loss=3.54410985
# => quant.acc=0.125
# => quant.loss=3.54154769
# => quant_corrected.acc=0.130555556
# => quant_corrected.loss=3.54351139
# => float_corrected.acc=0.130555556
# => float_corrected.loss=3.5462959
# => random_control.acc=0.116666667
# => random_control.loss=3.53765115
# => gain_quant.mean=-0.00196369099
# => gain_quant.lo=-0.00450772591
# => gain_quant.hi=0.000753585373
# => gain_float.mean=-0.00218605207
# => gain_float.lo=-0.00485098125
# => gain_float.hi=0.000338096682
# => gain_random.mean=0.00389654923
# => gain_random.lo=-3.89827196e-05
# => gain_random.hi=0.00857556667
# => other_layer_significant=false
# => verdict=no-gain
# => task.float_acc=0.127777778
# => task.threshold=0.825
# => gate=fail
# => regime=weight-only
# end of session (7 commands)
