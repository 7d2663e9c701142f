"""`ssl-pipeline predict IMAGE_OR_FOLDER`: class and confidence per file, as CSV lines."""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("predict", parents=[common], help="classify images with the champion (or any) classifier")
    p.add_argument("target", metavar="IMAGE_OR_FOLDER", help="an image file, or a folder searched recursively")
    p.add_argument("--model", default=None,
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/classifier, an MLflow model folder, "
                        "or models/classifier.pt (default: models:/<tracking.classifier_name>@champion)")
    p.add_argument("--out", default=None, metavar="CSV", help="also write path,class,confidence,error to this CSV")
    p.add_argument("--labeled", action="store_true",
                   help="the folder has one subfolder per class: check them against the model's classes, report accuracy")
    p.add_argument("--convert-to-gray", action="store_true",
                   help="feed colour images to a grayscale model anyway (converted), instead of refusing")
    p.set_defaults(func=run_predict)


def _default_model(params_file: str) -> str:
    from ssl_pipeline.serving.predict import DEFAULT_MODEL_NAME, default_model_uri

    name = DEFAULT_MODEL_NAME
    if Path(params_file).exists():   # predict also works outside a workspace (no params.yaml)
        from ssl_pipeline.config.schema import load_params

        name = load_params(params_file).tracking.classifier_name
    return default_model_uri(name)


def run_predict(args) -> int:
    from ssl_pipeline.errors import with_hint
    from ssl_pipeline.serving.predict import load_predictor, predict_files, write_csv

    if not Path(args.target).exists():   # before loading a model: say what is wrong with the input first
        raise with_hint(FileNotFoundError(f"no such image or folder: {args.target}"),
                        "give an image file or a folder of images (searched recursively)")
    from ssl_pipeline.serving.predict import check_feedable

    predictor = load_predictor(args.model or _default_model(args.params))
    print(predictor.headline(), file=sys.stderr, flush=True)
    check_feedable(predictor, Path(args.target), args.labeled, convert_to_gray=args.convert_to_gray)
    rows = predict_files(predictor, Path(args.target))
    if not rows:
        raise with_hint(FileNotFoundError(f"no image files found in {args.target}"),
                        "predict reads .png, .jpg/.jpeg, .bmp, .tif/.tiff and .webp files")
    good = [r for r in rows if not r["error"]]
    writer = csv.writer(sys.stdout)
    writer.writerow(("path", "class", "confidence"))
    for row in good:
        writer.writerow((row["path"], row["class"], f"{row['confidence']:.4f}"))
    sys.stdout.flush()
    for row in rows:
        if row["error"]:
            print(f"skipped {row['path']}: {row['error']}", file=sys.stderr)
    if args.out:
        write_csv(rows, Path(args.out))
        print(f"wrote {args.out}", file=sys.stderr)
    print(f"{len(good)} classified, {len(rows) - len(good)} skipped", file=sys.stderr)
    if args.labeled and good:
        target = Path(args.target).resolve()
        truth = [Path(r["path"]).resolve().relative_to(target).parts[0] for r in good]
        right = sum(t == r["class"] for t, r in zip(truth, good))
        print(f"accuracy against the class folders: {right}/{len(good)} = {right / len(good):.4f}", file=sys.stderr)
    return 0 if good else 1
