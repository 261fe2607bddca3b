"""edgecnn: from a folder of pictures to a fast, quantized ONNX classifier on an edge device.

The pipeline, one module per stage:

    data.py      folders of class subfolders -> tf.data pipelines        (train extra)
    models.py    registry of architectures (cnn, resnet50, mobilenetv2)  (train extra)
    train.py     `edgecnn train`                                         (train extra)
    export.py    Keras -> ONNX with a parity gate, `edgecnn export`      (train extra)
    quantize.py  INT8 (static QDQ) and FP16 variants                     (train extra)
    runtime.py   onnxruntime runner, CUDA/CPU providers                  (device)
    predict.py   `edgecnn predict`                                       (device)
    profile.py   `edgecnn profile`                                       (device)
    serve/       `edgecnn serve`, KServe v2 / Open Inference Protocol    (device)

The contract between stages lives in metadata.py; images.py holds the one image loader
that training, calibration, parity checks, predict and serve all share. Importing this
package never imports TensorFlow.
"""

__version__ = "0.1.0"
