"""Research tools beside the training library: not imported by training/, export/ or service/.

python -m research.toy            the 2D mixture benchmark of mode collapse (ring and grid)
python -m research.stacked_mnist  Stacked MNIST: build the data set, evaluate a run's mode coverage
python -m research.train_bench    training speed beside the pytorch/examples DCGAN loop
python3 -m research.gpu_check     the whole pipeline on one NVIDIA GPU, one command, one results file
"""
