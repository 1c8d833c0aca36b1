"""Other runtimes (ONNX Runtime, OpenVINO) as they are timed: each in a process of its own.

A runtime's threads disturb every other runtime in the same process: a ResNet-18 timed in PyTorch
right after ONNX Runtime bursts ran 2.3x slower than alone (1.8x with ONNX Runtime's spinning off),
and OpenVINO's TBB pool does the same. So an export's latency is measured in a worker process that
imports that runtime only (`worker`), driven burst by burst from the parent (`metrics.latency`), and
PyTorch models stay in the parent. Nothing here imports torch: a worker starts in a fraction of a second.
"""
