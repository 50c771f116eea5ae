"""A run, from the options to a complete run folder, in the order it happens:

    check the options     TrainConfig.check (trainer.config)
    load the data         read, validate each file once, split (trainer.data.load)
    what it is trained from   data, options, stack, code (trainer.fingerprint)
    start the session     seeds, the device's policy, the strategy (trainer.fit.session)
    choose the backbone   --backbone, or the candidates ranked (trainer.choose)
    featurize             pretrained features through the cache (trainer.features.extract)
    train                 the head on the features (trainer.head), then optionally fine-tuning;
                          without pretrained weights the whole network (trainer.fit.on_images)
    the operating point   --target-recall (trainer.operating_point)
    evaluate              the held-out splits (trainer.evaluate)
    write the run folder  whole or not at all (trainer.runwriter), then print its path
    the diagnostics       audit, heatmaps, exports, report (trainer.diagnostics)

What the run was asked stays as it was asked (config.json); what it decided on the way (the
backbone --backbone auto chose, the weights used, the threshold) is a record of its own
(decided.json). Every phase checkpoints each epoch (trainer.fit.resume), so rerunning the same
command after a disconnect resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer import decision, device, operating_point, places, runfolder
from trainer import result as run_result
from trainer.choose import choose
from trainer.config import TrainConfig
from trainer.data.load import Data, load_data
from trainer.data.rows import SPLITS
from trainer.diagnostics import runner
from trainer.diagnostics.table import Finished, pending
from trainer.errors import InputError
from trainer.evaluate import evaluate_splits
from trainer.features.extract import Extractor, extract, load_extractor
from trainer.features.store import Features, feature_store
from trainer.features.views import VIEWS
from trainer.fingerprint import remember, request_key, stat_cache, training_request
from trainer.fit.on_images import fine_tune, train_whole
from trainer.fit.session import Session, start_session
from trainer.head import train_head
from trainer.model import float32_copy, make_model
from trainer.runwriter import Decided, join_history, manifest, write_run
from trainer.stages import Stages

log = logging.getLogger("trainer")


@dataclass
class Trained:
    """What training leaves for evaluation and the run folder."""

    model: object  # pixels in, probabilities out: what is saved and exported
    predictor: object  # what evaluation runs: the head on cached features, or the model
    datasets: dict
    phases: dict  # name -> trainer.fit.loop.Phase
    backbone: str  # the backbone trained
    weights: str  # the weights it had: imagenet, none or a file
    seconds: float
    features: Features | None = None
    cache: dict | None = None  # what the feature cache did (extract's record)
    extra: dict = field(default_factory=dict)  # for the manifest: fine_tune, backbone_auto


def featurize(session: Session, extractor: Extractor, data: Data) -> tuple[Features, dict]:
    """Every image's pooled features, and each training image's in every other --feature-augment
    view, from the cache where it has them, into one array (trainer.features.store): one pass, so
    that a training image is decoded once for all its views."""
    config = session.config
    views = VIEWS[config.feature_augment]
    rows, train = data.rows(), data.parts["train"]
    store = feature_store(len(rows) + len(train) * (len(views) - 1), extractor.width)
    _, record = extract(extractor, [(rows, ("id",)), (train, views[1:])], session.workspace, out=store,
                        batch_size=session.featurize_batch_size, jit_compile=session.policy.xla)  # fmt: skip
    features = Features(store, {name: len(data.parts[name]) for name in SPLITS}, len(views))
    described = f" of {len(views)} views of each training image ({config.feature_augment})" if len(views) > 1 else ""
    log.info("%s, weights %s: bottleneck mode, training the head on %d-dimensional features%s", extractor.name,
             extractor.weights, features.dimensions, described)  # fmt: skip
    return features, record


def train_model(session: Session, data: Data, stage: Stages) -> Trained:
    """The backbone (chosen, with --backbone auto), then bottleneck mode (featurize, the head,
    optionally fine-tuning) or the whole network on images; a model trained under a
    mixed-precision policy comes back as its float32 copy."""
    import keras

    config, started, phases, extra = session.config, time.time(), {}, {}
    head = features = cache = None
    name, weights = config.backbone, config.weights
    if name == "auto":
        name, weights, extra["backbone_auto"] = choose(session, data)
    with session.strategy.scope():
        extractor = load_extractor(name, config.image_size, weights, config.feature_layer, config.pooling)
    if not extractor.pretrained and config.target_recall:
        raise InputError(
            f"--target-recall: {name} has no pretrained weights here, so the whole network would train; "
            "the threshold is chosen on the head's out-of-fold probabilities, so name a backbone with weights"
        )
    if extractor.pretrained:
        with stage("featurize"):
            features, cache = featurize(session, extractor, data)
        with stage("head"):
            head, datasets, phases["head"] = train_head(session, data, features)
            if phases["head"].refit is not None:
                phases["head_refit"] = phases["head"].refit
            with session.strategy.scope():
                model = make_model(extractor.backbone, name, len(data.labels), True, config.dropout, head)
        if config.fine_tune_layers:
            with stage("fine_tune"):
                datasets, phases["fine_tune"], extra["fine_tune"] = fine_tune(session, model, extractor.backbone, data)
    else:
        with stage("train"):
            model, datasets, phases["train"] = train_whole(session, extractor.backbone, name, data)
    seconds = time.time() - started
    if session.policy.mixed_precision:
        # What is evaluated, saved and exported computes in float32 (see model.float32_copy).
        keras.mixed_precision.set_global_policy("float32")
        model, head = float32_copy(model), None if head is None else float32_copy(head)
    predictor = head if head is not None and not config.fine_tune_layers else model
    return Trained(model, predictor, datasets, phases, name, extractor.weights, seconds, features, cache, extra)


def finish_diagnostics(config: TrainConfig, result: str | None = None) -> Path:
    """The same command rerun after a kill during the diagnostics: --output holds this run's
    model with diagnostics still pending, so they are run, and nothing is trained again."""
    run_dir = Path(config.output)
    failed = runner.finish(config, run_dir, places.workspace(config))
    if failed is None:
        places.run_folder(config)  # refuses the folder, saying why
    print(run_dir, flush=True)
    run_result.write(result, run_dir, "done")
    if failed:
        raise runner.DiagnosticsFailed(run_dir, failed)
    return run_dir


def assess(session: Session, data: Data, trained: Trained, stage: Stages) -> tuple:
    """The operating point (--target-recall) and the held-out splits' metrics under it:
    (rule, point or None, metrics, probabilities)."""
    config, rule, point = session.config, decision.ARGMAX, None
    if config.target_recall:
        with stage("operating_point"):
            rule, point = operating_point.choose(session, data, trained.features, trained.phases.get("head"))
    with stage("evaluate"):
        metrics, probabilities = evaluate_splits(config, data, trained.predictor, trained.datasets, rule)
    if point is not None:
        operating_point.on_test(rule, point, probabilities["test"], data.y("test"))
    return rule, point, metrics, probabilities


def land(run_dir: Path, session: Session, data: Data, trained: Trained, assessed: tuple, request: dict,
         stage: Stages) -> tuple[dict, object]:  # fmt: skip
    """The run folder's core, whole (trainer.runwriter): returns its manifest and what the
    audit still needs of the features (each image's own, or None)."""
    config, (rule, point, metrics, probabilities) = session.config, assessed
    decided = Decided(trained.backbone, trained.weights, data.labels, str(Path(config.folder).resolve()),
                      trained.extra.get("backbone_auto", {}).get("ranking"), trained.extra.get("fine_tune"),
                      None if point is None else rule.describe())  # fmt: skip
    record = manifest(data, session.policy, decided, trained.cache, trained.seconds, trained.phases)
    record.update(request=request, request_key=request_key(request), **trained.extra)
    record["stages"], record["diagnostics"] = stage.record, pending(config)
    # The audit reads each image's own features only; the head's datasets and every other view go.
    # Features pooled other than by average are not the audit's: it featurizes its own (table.py).
    audit_features = None
    if trained.features is not None:
        if config.audit and config.pooling == "avg":
            trained.features.keep_images_only()
            audit_features = trained.features.store
        else:
            trained.features.release()
    model, trained.features, trained.datasets = trained.model, None, None
    with stage("write"):
        write_run(run_dir, config, decided, model, data, (metrics, probabilities), join_history(trained.phases),
                  record, (rule, point))  # fmt: skip
    return record, audit_features


def main(config: TrainConfig, result: str | None = None) -> Path:
    """Train and evaluate; return the run folder. The model and what describes it are written to
    a hidden partial folder renamed into place, so a run folder always holds a complete model;
    its path is printed then (and written to `result`: trainer.result), and the diagnostics
    follow (trainer.diagnostics), none of which can cost the model. Raises DiagnosticsFailed
    after the run when one of them failed."""
    config = config.check()
    if config.output and (Path(config.output) / runfolder.MANIFEST).is_file():
        return finish_diagnostics(config, result)
    stage = Stages()
    run_dir, workspace, weights_cache = (
        places.run_folder(config),
        places.workspace(config),
        places.weights_cache(config),
    )
    if weights_cache is not None:
        # Keras reads KERAS_HOME when it downloads: ImageNet weights on Drive survive a reset.
        os.environ["KERAS_HOME"] = str(weights_cache)
    with stage("validate"):
        data = load_data(config)
    with stage("digest"):
        # What this run is from, by the hashes validation took as it read each file; recorded as
        # invoke's stat cache too, so that its next decision reads no image.
        request = training_request(config, data.files, data.listed)
        remember(data.files, stat_cache(config))
    if config.target_recall:
        decision.check_label(config.target_recall, data.labels)
    session = start_session(config, data, workspace, request["options"])
    trained = train_model(session, data, stage)
    assessed = assess(session, data, trained, stage)
    if not device.is_chief():
        shutil.rmtree(session.checkpoint_root, ignore_errors=True)
        log.info("worker done; the chief writes the run folder")
        return run_dir
    record, audit_features = land(run_dir, session, data, trained, assessed, request, stage)
    print(run_dir, flush=True)  # the model is complete: `invoke train` publishes it whatever follows
    run_result.write(result, run_dir, "model")
    log.info("run folder: %s", run_dir)
    finished = Finished(run_dir, config, workspace, data, trained.model, audit_features, config.export_benchmark)
    failed = runner.run(finished, record, stage=stage)
    shutil.rmtree(session.checkpoint_root, ignore_errors=True)
    run_result.write(result, run_dir, "done")
    if failed:
        raise runner.DiagnosticsFailed(run_dir, failed)
    return run_dir
