"""edgecnn: from a folder of pictures to a fast, quantized ONNX classifier on an edge device.

Every module, by the side it runs on. The device side needs only onnxruntime, numpy, Pillow, the
HTTP stack and the command line; the workstation side adds TensorFlow (the train extra).
Importing this package never imports TensorFlow.

Workstation: a folder of pictures -> a verified ONNX export (the train extra)

    builtin_datasets.py  digits and photos written as class-folder trees (no network)
    data.py              class folders -> reproducible train/validation splits -> tf.data
    models.py            registry of architectures: cnn, resnet50, mobilenetv2
    tfimport.py          importing TensorFlow quietly, for train and export only
    train.py             training, early stopping, the model folder
    distribute.py        train --distribute: mirrored (GPUs) and multiworker (hosts)
    verdict.py           did training learn? (chance, majority class)
    train_plots.py       training curves and confusion matrix as PNG (matplotlib)
    export.py            Keras -> ONNX with the parity gate, variants, the export report
    convert.py           the conversion itself (tf2onnx), preprocessing inside the graph
    export_rewrites.py   exact graph rewrites at export: folded pads, channel swaps; graph helpers
    variants.py          registry of variants beside FP32: int8, fp16
    quantize.py          INT8 (static QDQ, calibrated) and FP16 files
    sensitivity.py       per-layer INT8 cost, for the float fallback
    reference.py         plain-NumPy CNN operations, the oracle for layer semantics

Device: run, judge and choose

    images.py            the one image loader (training, calibration, predict, serve)
    metadata.py          the contract between stages: input, preprocessing, classes, variant files
    foreign.py           models without edgecnn metadata: what the user states about them
    onnxfile.py          an ONNX file may only read external data from its own folder
    ort.py               importing onnxruntime: which extra, two builds installed
    providers.py         registry of execution providers: cpu, cuda, tensorrt, openvino
    machine.py           CPU model and flags, cores, cgroup quota, memory, GPUs
    runtime.py           the onnxruntime runner: one session, many callers; top_k
    session_cache.py     onnxruntime's optimized graph kept per model and CPU: sessions open faster
    predict.py           classify files and folders, batch by batch; output formats
    row_files.py         registry of row files: .jsonl, .parquet
    confusion.py         the confusion matrix (training and labelled folders)
    profile.py           latency, throughput, memory, operators, side by side
    verify.py            does this file, here, still answer like Keras did?
    tune.py              the fastest verified configuration on this machine
    provider_rewrites.py registry of exact INT8 rewrites for one provider and CPU family
    tuned_config.py      deploy.json: the tuned configuration and serving settings, applied
    tune_serve.py        tune --serve: serving settings under a p99 target
    loadgen.py           keep-alive clients on loopback, latency percentiles
    launch.py            start `edgecnn serve` as a child process, stop it with SIGTERM

Serve: the HTTP server, the package serve/ (its __init__ maps it)

    serve/server.py, config.py, repository.py, service.py, endpoints.py, admission.py,
    batching.py, protocol.py, metrics.py, openapi.py, page.py (+ page.html)

Report and fleet

    report.py            one self-contained HTML page of a model folder
    htmlpage.py          HTML building blocks: escaped tables, inline PNGs, the style
    charts.py            SVG charts in plain Python (report, profile --plot)
    deploy.py            deploy kserve: Dockerfile + InferenceService
    triton.py            deploy triton: a Triton model repository
    ray_predict.py       predict --ray: the same predictions from Ray actors

Shared by every side

    errors.py            user mistakes: one line, the setting at fault
    registry.py          the one registry shape: unknown names list the known ones
    files.py             atomic writes, JSON
    tables.py            tables for people (rich), control characters escaped

Command line: the package cli/ (typer; its __init__ maps the commands by stage)

    cli/__init__.py, common.py, options.py, progress.py, train.py, export.py, run.py, tune.py,
    serve.py, deploy.py, report.py; __main__.py: `python -m edgecnn`
"""

__version__ = "0.1.0"
