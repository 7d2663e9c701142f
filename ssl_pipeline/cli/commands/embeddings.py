"""`ssl-pipeline embed`, `similar` and `select`: the encoder's embeddings as files, neighbours,
near-duplicates and what to label next (README: "Using the embeddings")."""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

HELP_ORDER = 40
ENCODER_HELP = ("encoder: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID, or models/encoder.pt "
                "(default: models:/<tracking.encoder_name>@champion)")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    e = sub.add_parser("embed", parents=[common], help="write an encoder's embeddings of a folder or prepared split to Parquet",
                       description="Embed every image of SOURCE (a folder, searched recursively, or a prepared split: "
                                   "unlabeled, train, val, test) and write path, split, label and vector per image to "
                                   "a Parquet file, a chunk at a time.")
    e.add_argument("source", metavar="SOURCE", help="a folder of images, or unlabeled | train | val | test")
    e.add_argument("--model", default=None, help=ENCODER_HELP)
    e.add_argument("--out", default="embeddings.parquet", help="Parquet file to write (default: embeddings.parquet)")
    e.add_argument("--labeled", action="store_true", help="SOURCE is a folder with one subfolder per class: record labels")
    e.add_argument("--log-mlflow", action="store_true", help="also log the file as an artifact of an MLflow run 'embed'")
    e.set_defaults(func=cmd_embed)

    s = sub.add_parser("similar", parents=[common], help="nearest neighbours of an image, or near-duplicates in a folder",
                       description="IMAGE: its --k most similar images (cosine) in an embeddings file. FOLDER: every "
                                   "pair of images in it whose cosine similarity is at least --threshold "
                                   "(near-duplicates inflate test scores and waste labels).")
    s.add_argument("target", metavar="IMAGE_OR_FOLDER")
    s.add_argument("--k", type=int, default=10, help="neighbours to list (default 10)")
    s.add_argument("--embeddings", default="embeddings.parquet", help="IMAGE: search this file (default: embeddings.parquet)")
    s.add_argument("--threshold", type=float, default=0.95, help="FOLDER: cosine similarity of a near-duplicate (default 0.95)")
    s.add_argument("--model", default=None, help=ENCODER_HELP + "; IMAGE: default the encoder the file was written with")
    s.add_argument("--out", default=None, metavar="CSV", help="also write the rows to this CSV")
    s.set_defaults(func=cmd_similar)

    c = sub.add_parser("select", parents=[common], help="which unlabeled images to label next (CSV + contact sheet)",
                       description="Choose --budget images of the unlabeled pool to label next from the champion "
                                   "encoder's embeddings and write their paths to a CSV and a contact sheet (PNG).")
    c.add_argument("--budget", type=int, required=True, metavar="N", help="how many images to choose")
    c.add_argument("--strategy", choices=["kcenter", "random", "uncertainty"], default="kcenter",
                   help="kcenter (default): cover the embedding space; random; uncertainty: the champion "
                        "classifier's least certain images")
    c.add_argument("--by-cluster", action="store_true", help="split the budget evenly over k-means clusters of the embeddings")
    c.add_argument("--clusters", type=int, default=0, metavar="K", help="--by-cluster: K clusters (default: the champion's class count)")
    c.add_argument("--from", dest="pool", default="unlabeled", metavar="SOURCE",
                   help="the pool: the prepared unlabeled split without the images already labeled (default) or a folder")
    c.add_argument("--model", default=None, help=ENCODER_HELP)
    c.add_argument("--classifier", default=None, help="uncertainty: the classifier (default: models:/<classifier>@champion)")
    c.add_argument("--seed", type=int, default=0, help="random and the first k-center pick without labels")
    c.add_argument("--out", default="selection.csv", help="CSV of the chosen paths (default: selection.csv); "
                                                          "the contact sheet is written beside it as .png")
    c.set_defaults(func=cmd_select)


def _params(args):
    from ssl_pipeline.cli.common import params_of

    return params_of(args) if Path(args.params).exists() else None


def _encoder(args, params):
    from ssl_pipeline.tracking import runs as tracking
    from ssl_pipeline.tracking.encoders import load_encoder_model

    tracking.mlflow.set_tracking_uri(tracking.tracking_uri())
    name = params.tracking.encoder_name if params else "ssl-encoder"
    return load_encoder_model(args.model or f"models:/{name}@champion")


def _bar(desc: str):
    from ssl_pipeline.progress import Progress

    return Progress(1, desc)


def cmd_embed(args) -> int:
    from ssl_pipeline.serving.embeddings import resolve_source, write_embeddings

    params = _params(args)
    prepared = Path(params.data.prepared_dir if params else "data/prepared")
    source = resolve_source(args.source, prepared, args.labeled)   # bad input fails before any model loads
    encoder, spec, origin = _encoder(args, params)
    print(f"encoder: {origin.describe()} ({spec.backbone}, {spec.in_channels}x{spec.image_size}x{spec.image_size})",
          file=sys.stderr)
    bar = _bar(f"embed {source.description}")
    result = write_embeddings(encoder, spec, origin.describe(), source, Path(args.out), progress=bar.update,
                              model_uri=origin.fixed_uri())
    bar.close()
    for r in result["rejected"][:20]:
        print(f"skipped {r.path}: {r.reason}", file=sys.stderr)
    skipped = len(result["rejected"])
    print(f"wrote {result['out']}: {result['rows']} embeddings of dimension {result['dim']}"
          + (f", {skipped} file(s) skipped" if skipped else ""))
    if args.log_mlflow:
        from ssl_pipeline.tracking import runs as tracking

        tracking.setup(params.tracking.experiment if params else "ssl-pipeline")
        with tracking.mlflow.start_run(run_name="embed", tags={"stage": "embed", "embed.model": origin.describe(),
                                                               "embed.source": source.description}) as run:
            tracking.mlflow.log_artifact(result["out"], artifact_path="embeddings")
        print(f"logged to MLflow run {run.info.run_id} (artifact embeddings/{Path(result['out']).name})")
    return 0


def cmd_similar(args) -> int:
    from ssl_pipeline.serving.embeddings import BadInput

    target = Path(args.target)
    if target.is_dir():
        return _duplicates(args, target)
    if not target.is_file():
        raise BadInput(f"no such image or folder: {target}")
    if args.k < 1:
        raise BadInput(f"--k must be at least 1, got {args.k}")
    return _neighbours(args, target)


def _neighbours(args, image: Path) -> int:
    from ssl_core.embeddings.files import embed_files
    from ssl_core.embeddings.search import top_k_cosine
    from ssl_pipeline.serving.embeddings import BadInput, read_embeddings

    paths, vectors, meta = read_embeddings(Path(args.embeddings))
    args.model = args.model or meta.get("ssl_pipeline.model_uri")   # the query embeds with the file's encoder
    encoder, spec, origin = _encoder(args, _params(args))
    chunk = next(embed_files(encoder, [(image, -1)], image.parent, spec.image_size, spec.in_channels), None)
    if chunk is None or not chunk.paths:
        why = chunk.rejected[0].reason if chunk and chunk.rejected else "not an image"
        raise BadInput(f"{image} cannot be read as an image ({why})")
    if chunk.vectors.shape[1] != vectors.shape[1]:
        raise BadInput(f"{args.embeddings} holds {vectors.shape[1]}-dimensional vectors but {origin.describe()} "
                       f"makes {chunk.vectors.shape[1]}: pass the --model the file was written with")
    sims, idx = top_k_cosine(chunk.vectors, vectors, args.k)
    print(f"encoder: {origin.describe()}; {len(paths)} embeddings in {args.embeddings}", file=sys.stderr)
    rows = [(rank, f"{float(s):.4f}", paths[int(i)]) for rank, (s, i) in enumerate(zip(sims[0], idx[0]), 1)]
    return _emit(["rank", "similarity", "path"], rows, args.out)


def _duplicates(args, folder: Path) -> int:
    from ssl_core.embeddings.search import near_duplicate_pairs
    from ssl_pipeline.serving.embeddings import folder_source, iter_embeddings

    import torch

    source = folder_source(folder)
    encoder, spec, origin = _encoder(args, _params(args))
    bar = _bar(f"embed {folder}")
    paths, chunks = [], []
    for p, _, vectors, _ in iter_embeddings(encoder, spec, source, bar.update):
        paths += p
        chunks.append(vectors)
    bar.close()
    pairs = near_duplicate_pairs(torch.cat(chunks), args.threshold)
    print(f"encoder: {origin.describe()}; {len(paths)} images, {len(pairs)} near-duplicate pair(s) at cosine >= "
          f"{args.threshold:g}", file=sys.stderr)
    return _emit(["similarity", "path_a", "path_b"], [(f"{s:.4f}", paths[i], paths[j]) for i, j, s in pairs], args.out)


def _emit(header: list[str], rows: list, out: str | None) -> int:
    writer = csv.writer(sys.stdout)
    writer.writerow(header)
    writer.writerows(rows)
    sys.stdout.flush()
    if out:
        with open(out, "w", newline="") as fh:
            csv.writer(fh).writerows([header, *rows])
        print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_select(args) -> int:
    from ssl_core.embeddings.select import kmeans
    from ssl_pipeline.serving import selection
    from ssl_pipeline.serving.embeddings import BadInput, resolve_source

    params = _params(args)
    prepared = Path(params.data.prepared_dir if params else "data/prepared")
    if args.budget < 1:
        raise BadInput(f"--budget must be at least 1, got {args.budget}")
    source = resolve_source(args.pool, prepared)
    encoder, spec, origin = _encoder(args, params)
    bar = _bar(f"embed {source.description}")
    pool = selection.load_pool(encoder, spec, source, bar.update)
    bar.close()
    if not pool.paths:
        raise BadInput(f"the pool ({source.description}) has no image that is not labeled already")
    margins = clusters = labeled = None
    if args.strategy == "uncertainty":
        from ssl_pipeline.serving.predict import default_model_uri, load_predictor

        name = params.tracking.classifier_name if params else "ssl-classifier"
        margins = selection.classifier_margins(load_predictor(args.classifier or default_model_uri(name)), pool)
    if args.strategy == "kcenter" and source.prepared_dir is not None:
        labeled = selection.labeled_vectors(encoder, spec, prepared)
    if args.by_cluster:
        import json

        meta = prepared / "meta.json"
        k = args.clusters or (json.loads(meta.read_text())["num_classes"] if meta.exists() else 10)
        clusters = kmeans(pool.vectors, k, seed=args.seed)
    chosen = selection.choose(pool, args.budget, args.strategy, args.seed, labeled, margins, clusters)
    out = Path(args.out)
    selection.write_selection(pool, chosen, out, margins, clusters)
    sheet = out.with_suffix(".png")
    selection.contact_sheet(selection.thumbnails(pool, chosen), sheet)
    print(f"encoder: {origin.describe()}; chose {len(chosen)} of {len(pool.paths)} pool images by {args.strategy}"
          f"{' balanced over ' + str(int(clusters.max()) + 1) + ' clusters' if clusters is not None else ''}")
    print(f"wrote {out} and {sheet}")
    return 0
