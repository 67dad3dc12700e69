"""``treeclip serve``: the HTTP API and the web page, on top of a model and a label bank."""

from __future__ import annotations

import argparse
from pathlib import Path

from treeclip.cli._options import Requirement, check_hub_model
from treeclip.cli.predict import ONNX_RUNTIME, OPENVINO_RUNTIME, add_runtime_argument, check_runtime

REQUIRES = (Requirement("serve", ("fastapi", "uvicorn", "multipart")), ONNX_RUNTIME, OPENVINO_RUNTIME)
HELP = "serve the HTTP API (predict, embed, info) and the web page for identifying photos"
DEMO_MODEL, DEMO_BANK = Path("treeclip-demo/model"), Path("treeclip-demo/bank")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--model", help=f"model id: hf-hub:ORG/NAME, a model folder or a checkpoint "
                        f"(default: the demo's {DEMO_MODEL}, written by `treeclip demo`)")
    parser.add_argument("--bank", help=f"label bank folder (default: {DEMO_BANK} with the demo model, "
                        "else the model's released TreeOfLife bank)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="request body limit in MB (default 20)")
    parser.add_argument("--max-pixels", type=float, default=50e6, help="pixels per image (default 50e6)")
    parser.add_argument("--queue-size", type=int, default=32,
                        help="requests in progress at once; more are answered 503 with Retry-After (default 32)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request before 503 (default 60)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="images per model call, gathered from concurrent requests (default 8; more on a GPU)")
    parser.add_argument("--workers", type=int, default=2, help="image decoding threads (default 2)")
    parser.add_argument("--max-connections", type=int, default=256,
                        help="open connections at once; more are answered 503 (default 256)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="a host name clients may use besides localhost, IP addresses and --host "
                             "(repeatable; other Host headers are refused, against DNS rebinding)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "int8"),
                        help="fp32, or int8 (dynamic quantisation of the image tower, CPU)")
    add_runtime_argument(parser)
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--prior", metavar="PRIOR", help="location prior (`treeclip prior build`): requests "
                        "with lat/lon or use_photo_gps are reweighted by it")
    parser.add_argument("--prior-weight", type=float, default=1.0, metavar="W",
                        help="mixing weight of the prior, 0 .. 1 (default 1)")


def _model_and_bank(args: argparse.Namespace) -> tuple[str, str | None]:
    from treeclip.errors import UsageError  # noqa: PLC0415

    if args.model:
        return args.model, args.bank
    if DEMO_MODEL.is_dir() and (args.bank or DEMO_BANK.is_dir()):
        return str(DEMO_MODEL), args.bank or str(DEMO_BANK)
    raise UsageError(f"no model to serve: give --model MODEL --bank BANK, or run `treeclip demo` first "
                     f"(it writes {DEMO_MODEL} and {DEMO_BANK}, served by default)")


def _limits(args: argparse.Namespace):  # noqa: ANN202 - treeclip.serve.limits is imported lazily
    from treeclip.errors import UsageError  # noqa: PLC0415
    from treeclip.serve.limits import Limits  # noqa: PLC0415

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    try:
        return Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_pixels),
                      queue_size=args.queue_size, timeout_s=args.timeout, max_batch=args.max_batch,
                      decode_workers=args.workers, max_connections=args.max_connections,
                      allowed_hosts=(args.host, *args.allow_host))
    except ValueError as exc:
        raise UsageError(f"serve limits: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    model, bank = _model_and_bank(args)
    check_hub_model(model)  # one line before torch loads, not the hub client's retries
    limits = _limits(args)
    check_runtime(model, args.runtime)

    import uvicorn  # noqa: PLC0415

    from treeclip.predict.classifier import TreeOfLifeClassifier  # noqa: PLC0415
    from treeclip.serve.app import create_app  # noqa: PLC0415

    classifier = TreeOfLifeClassifier.from_pretrained(model, bank, prior=args.prior, prior_weight=args.prior_weight,
                                                      precision=args.precision, device=args.device,
                                                      runtime=args.runtime)
    app = create_app(classifier=classifier, limits=limits)
    print(f"treeclip serve: {model} with {len(classifier.full_bank)} taxa on http://{args.host}:{args.port}/",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", limit_concurrency=limits.max_connections)
    return 0
