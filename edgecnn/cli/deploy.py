"""Stage 5, to a fleet: `edgecnn deploy kserve` (an image and an InferenceService) and `edgecnn deploy
triton` (a model repository). Thin commands over `edgecnn.deploy` and `edgecnn.triton`.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecnn.cli.common import Commands, echo, user_errors
from edgecnn.cli.options import argument, option

app = typer.Typer(
    cls=Commands,
    no_args_is_help=True,
    help="Write what a fleet needs to serve an exported model: KServe (image + InferenceService) or Triton "
    "(model repository).",
)

ModelDir = Annotated[
    Path,
    argument(metavar="MODEL_DIR", help="An exported model folder (models/NAME/ with model.onnx and its variants)."),
]
Variant = Annotated[
    Optional[str],
    option(
        help="Which exported file: fp32, int8 or fp16. Default: the variant `edgecnn export` recommended "
        "(else model.onnx)."
    ),
]


@app.command("kserve")
def kserve(
    ctx: typer.Context,
    model_dir: ModelDir,
    image: Annotated[str, option(help="Image reference to build and push, e.g. registry.example.com/team/digits:1.")],
    name: Annotated[
        Optional[str], option(help="InferenceService name and model name in URLs. Default: the model folder's name.")
    ] = None,
    gpu: Annotated[
        bool,
        option(
            "--gpu", help="Install edgecnn[gpu], serve with --device cuda and request one nvidia.com/gpu. Default: CPU."
        ),
    ] = False,
    out: Annotated[
        Optional[Path], option(help="Folder to write (replaced atomically). Default: MODEL_DIR/kserve.")
    ] = None,
    variant: Variant = None,
    cpu: Annotated[
        str,
        option(
            help="CPU request of the predictor (Kubernetes quantity; the limit is twice it; serve's threads match "
            "the limit). Default: 1."
        ),
    ] = "1",
    memory: Annotated[str, option(help="Memory request and limit of the predictor. Default: 1Gi.")] = "1Gi",
):
    """Write a Dockerfile and a KServe InferenceService (v1beta1, v2 protocol) for an exported model."""
    with user_errors(ctx):
        from edgecnn.deploy import KServeConfig, deploy_kserve

        files = deploy_kserve(
            KServeConfig(
                model_dir=model_dir, image=image, out=out, name=name, gpu=gpu, variant=variant, cpu=cpu, memory=memory
            )
        )
        echo(f"wrote {files.dockerfile}, {files.manifest} and {files.model}")
        echo(f"next: docker build -t {image} {files.out} && docker push {image}")
        echo(f"      kubectl apply -f {files.manifest}")


@app.command("triton")
def triton(
    ctx: typer.Context,
    model_dir: ModelDir,
    out: Annotated[
        Path,
        option(help="Triton model repository to write into (OUT/NAME/config.pbtxt, labels.txt, 1/model.onnx)."),
    ],
    name: Annotated[
        Optional[str], option(help="Model name in the repository. Default: the model folder's name.")
    ] = None,
    variant: Variant = None,
    max_batch_size: Annotated[int, option(help="Triton's max_batch_size (dynamic batching). Default: 32.")] = 32,
):
    """Write a Triton Inference Server model repository (onnxruntime backend) for an exported model."""
    with user_errors(ctx):
        from edgecnn.triton import deploy_triton

        folder = deploy_triton(model_dir, out, name=name, variant=variant, max_batch_size=max_batch_size)
        echo(f"wrote Triton model repository {folder}")
        echo(f"next: tritonserver --model-repository {out}")
