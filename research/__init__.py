"""Research tools beside the training library: not imported by training/, export/ or service/.

python -m research.toy            the 2D mixture benchmark of mode collapse (ring and grid)
python -m research.stacked_mnist  Stacked MNIST: build the data set, evaluate a run's mode coverage
python -m research.train_bench    training speed beside the pytorch/examples DCGAN loop
python -m research.bn_batches     how few latents re-estimate the generator's BatchNorm statistics
python -m research.ema_bench      the EMA update: a per-tensor lerp_ loop vs one torch._foreach_lerp_
python3 -m research.gpu_check     the whole pipeline on one NVIDIA GPU, one command, one results file
"""
