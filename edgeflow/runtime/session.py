"""Session: adapt a bundle to new classes and predict, with forward passes only (numpy + runners).

``adapt`` mirrors :func:`edgeflow.adapt.hyperflow_adapt` and ``predict`` mirrors
:func:`edgeflow.adapt.classify` step for step (same prototype formula, same integrator code from
:mod:`edgeflow.integrate`, same cosine/euclidean logits with the same scale), so a bundle gives the
labels PyTorch gives. A Session holds no per-task state: tasks are values, many may be live, and
one Session may be used from several threads at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeflow.errors import BundleError, DataError
from edgeflow.integrate import integrate
from edgeflow.runtime.backends import choose_for_target, open_runners
from edgeflow.runtime.bundle import Bundle, load_bundle
from edgeflow.runtime.drift_loop import drift_path, graph_inputs
from edgeflow.runtime.guard import flip_width, run_guard
from edgeflow.runtime.inputs import check_labels, check_steps, prepare_images
from edgeflow.runtime.openset import OpenSetStats
from edgeflow.runtime.openset import fit as openset_fit
from edgeflow.runtime.protos import prototype_logits, prototypes, softmax
from edgeflow.runtime.signals import recenter_move
from edgeflow.runtime.support import Support
from edgeflow.runtime.task import TASK_FORMAT, Task, _frozen, merged_class_names
from edgeflow.runtime.trust import check_expected, verify_signature

log = logging.getLogger("edgeflow.runtime")
UNKNOWN = -1  # the label predict(reject=...) gives a query from none of the task's classes
__all__ = ["TASK_FORMAT", "UNKNOWN", "Session", "Task", "prototype_logits", "prototypes", "softmax"]


class Session:
    """Adapt and predict with a bundle. ``backend``: "auto", "onnxruntime" or "tensorrt".

    ``precision`` picks the backbone variant: "fp32" (default on ONNX Runtime), "int8" where the
    bundle has one; on TensorRT also "fp16" (the default there). ``"auto"`` tries TensorRT and falls
    back to ONNX Runtime, recording why in ``fallback_reason``.

    ``expect`` pins the bundle: its fingerprint (``sha256:...``, printed by ``edgeflow inspect``)
    must match or the Session refuses it. ``trusted_keys`` (Ed25519 public keys: PEM paths or
    bytes) requires a signature by one of them (``edgeflow sign``). See :mod:`edgeflow.runtime.trust`.

    Example::

        with Session("r20.bundle") as s:
            task = s.adapt(support_images, support_labels)       # uint8 (N, H, W, C), ints
            labels, scores = s.predict(query_images, task)
    """

    def __init__(self, bundle: str | Path | Bundle, *, backend: str = "auto",
                 precision: str | None = None, threads: int | None = None, verify: bool = True,
                 engine_cache: str | Path | None = None, build_options: Any = None,
                 batch_size: int | None = None, target: Any = None, expect: str | None = None,
                 trusted_keys: Iterable[Any] | None = None) -> None:
        if isinstance(bundle, Bundle):  # loaded (and verified) by the caller; pin and signature here
            check_expected(bundle.path, bundle.fingerprint, expect)
            if trusted_keys is not None:
                verify_signature(bundle.path, bundle.fingerprint, trusted_keys)
            self.bundle = bundle
        else:
            self.bundle = load_bundle(bundle, verify=verify, expect=expect, trusted_keys=trusted_keys)
        if target is not None:  # a device profile (name, path or Target) chooses what is unset
            backend, precision, build_options = choose_for_target(
                self.bundle, target, backend, precision, build_options)
        opened = open_runners(self.bundle, backend=backend, precision=precision, threads=threads,
                              engine_cache=engine_cache, build_options=build_options)
        self.backend, self.precision = opened.backend, opened.precision
        self.fallback_reason = opened.fallback_reason
        self.engines = opened.engines  # TensorRT: graph -> "cached" / "built" / "rebuilt: ..."
        if self.fallback_reason:  # a warning when TensorRT is there but failed; else just info
            level = logging.INFO if "unavailable" in self.fallback_reason else logging.WARNING
            log.log(level, "using %s: %s", self.backend, self.fallback_reason)
        self.runners = opened.runners
        # Backbone calls are chunked. On the CPU 16 images per call is as fast per image as 64 and
        # keeps the peak RSS ~10 MB lower (measured: ResNet-20, 2 cores); a GPU wants big batches
        # up to the engine profile's maximum.
        if batch_size is None:
            batch_size = 16 if self.backend == "onnxruntime" else 64
        self.batch_size = min(batch_size, opened.max_batch) if opened.max_batch else batch_size
        self.preprocess = self.bundle.preprocess
        self.theta0 = _frozen(self.bundle.theta0())
        integ = self.bundle.integrator
        self.method, self.steps, self.dt = integ["method"], int(integ["steps"]), integ.get("dt")
        # re-centring strength (edgeflow.adapt.recenter); bundles from before it have none
        self.recenter = float(integ.get("recenter", 0.0))
        # the guard's re-centring-alone candidate (IntegratorSettings.guard_alpha); older: none
        self.guard_alpha = self.recenter or float(integ.get("guard_recenter", 0.0))
        # closed loop every r steps (0: open loop); bundles from before it have none
        self.loop_every = int(integ.get("loop_every", 0))
        # an outcome-trained drift also reads support statistics (edgeflow.runtime.signals)
        self.drift_stats = self.bundle.has_drift and "stats" in graph_inputs(self, "drift")
        # a task encoder with shot tokens also reads the individual support features
        self.drift_shots = (self.bundle.has_drift
                            and "shots" in graph_inputs(self, "task_encoder"))
        if self.drift_stats and "theta_means" not in {
                o.name for o in self.runners["backbone"].outputs}:
            raise BundleError("drift.onnx reads support statistics but backbone.onnx has no "
                              "theta_means output; export the bundle again with this EdgeFlow")
        if self.guard_alpha and "theta_means" not in {
                o.name for o in self.runners["backbone"].outputs}:
            raise BundleError("the manifest asks for re-centring but backbone.onnx has no "
                              "theta_means output; export the bundle again with this EdgeFlow")
        self.metric, self.scale = self.bundle.metric, self.bundle.scale
        # the backbone cut at theta (FP32 on ONNX Runtime): support passes at a new theta are
        # suffix passes over the prefix's cache
        self.split = {"backbone_prefix", "backbone_suffix"} <= set(self.runners)
        feats = {o.name: o for o in self.runners["backbone"].outputs}.get("features")
        dim = feats.shape[-1] if feats is not None and feats.shape else None
        self.feature_dim = dim if isinstance(dim, int) else None  # to check a task against

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        for r in self.runners.values():
            r.deactivate()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building blocks ------------------------------------------------------------------------
    def prepare(self, images: np.ndarray | Sequence[np.ndarray], *, what: str = "images") -> np.ndarray:
        """Check and preprocess images as the bundle's manifest says (see :func:`prepare_images`)."""
        return prepare_images(images, self.preprocess, allow_resize=self.bundle.allow_resize,
                              what=what)

    def features(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Backbone features (N, D) of preprocessed ``x`` at ``theta``, in batches."""
        return self._backbone(x, theta, "features")[0]

    def _backbone(self, x: np.ndarray, theta: np.ndarray, *names: str) -> list[np.ndarray]:
        return self._suffix({"images": x}, theta, *names, runner=self.runners["backbone"])

    def support_cache(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """What a support pass at any theta needs of preprocessed images ``x``: the prefix's
        activations with a split bundle, else the images themselves."""
        if not self.split:
            return {"images": x}
        runner = self.runners["backbone_prefix"]
        outs = [runner.infer({"images": x[i:i + self.batch_size]})
                for i in range(0, len(x), self.batch_size)]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def _suffix(self, cache: dict[str, np.ndarray], theta: np.ndarray, *names: str,
                runner: Any = None) -> list[np.ndarray]:
        """Backbone outputs ``names`` at ``theta`` from a support cache, in batches."""
        if runner is None:
            runner = self.runners["backbone_suffix" if self.split else "backbone"]
        n = len(next(iter(cache.values())))
        outs = [runner.infer({**{k: v[i:i + self.batch_size] for k, v in cache.items()},
                              "theta": theta}) for i in range(0, n, self.batch_size)]
        return [np.concatenate([o[k] for o in outs]) for k in names]

    def embed_task(self, protos: np.ndarray, *, shots: np.ndarray | None = None,
                   labels: np.ndarray | None = None) -> np.ndarray:
        """z (1, E) of class prototypes (W, D); a task encoder with shot tokens also needs the
        support features ``shots`` (N, D) and their episode ``labels`` (N,) in 0..W-1."""
        p = protos[None].astype(np.float32)
        feed = {"prototypes": p, "mask": np.ones(p.shape[:2], np.float32)}
        if self.drift_shots:
            if shots is None or labels is None:
                raise BundleError("this bundle's task encoder reads the individual shots; pass "
                                  "shots= and labels= (or adapt through Session.adapt)")
            onehot = np.eye(p.shape[1], dtype=np.float32)[np.asarray(labels)]
            feed |= {"shots": shots[None].astype(np.float32), "shot_labels": onehot[None]}
        return self.runners["task_encoder"].infer(feed)["z"]

    def velocity(self, theta: np.ndarray, t: float, z: np.ndarray,
                 stats: np.ndarray | None = None) -> np.ndarray:
        """One drift evaluation; ``stats`` (1, S) for a drift that reads support statistics."""
        feed = {"theta": np.asarray(theta, np.float32)[None], "t": np.full((1, 1), t, np.float32),
                "z": z}
        if self.drift_stats:
            if stats is None:
                raise BundleError("this bundle's drift reads support statistics; adapt through "
                                  "Session.adapt, which computes them")
            feed["stats"] = stats.astype(np.float32)
        return self.runners["drift"].infer(feed)["velocity"][0]

    def integrate_theta(self, z: np.ndarray, *, steps: int | None = None,
                        method: str | None = None) -> np.ndarray:
        """theta0 moved by an open-loop drift that reads no statistics, from z alone: the same
        :func:`edgeflow.integrate.integrate` as training (:meth:`adapt` handles every drift)."""
        steps = self.steps if steps is None else steps
        return integrate(lambda t, th: self.velocity(th, t, z), self.theta0, steps=steps,
                         dt=self.dt, method=method or self.method)

    # -- the two verbs --------------------------------------------------------------------------
    def adapt(self, images: np.ndarray | Sequence[np.ndarray], labels: Sequence[int] | np.ndarray,
              *, ways: int | None = None, class_names: Sequence[str] | None = None,
              steps: int | None = None, one_class: bool = False,
              guard: bool | Sequence[int] = False) -> Task:
        """Adapt to the support set (``images``, integer ``labels``) and return a :class:`Task`.

        ``ways`` (or ``class_names``) declares the classes 0..W-1 so that one with no image is an
        error instead of silently dropped. ``steps`` overrides the manifest's integration steps.
        A single class is an error unless ``one_class`` ("is this my mug?"): such a task can only
        answer through rejection, ``predict(..., reject=recall)``. ``guard`` (True, or the drift
        step counts to try) keeps the candidate theta the support set scores best, theta0 unless
        beaten: leave-one-out, or with 1 shot in some class its images' horizontally flipped views
        as queries (:mod:`edgeflow.runtime.guard`).
        The task keeps the support set's cache (:mod:`edgeflow.runtime.support`), so it can grow
        (:meth:`update`) or shrink (:meth:`remove`) without the old images.
        """
        if class_names is not None:
            class_names = tuple(str(c) for c in class_names)
            if ways is not None and ways != len(class_names):
                raise DataError(f"ways={ways} but {len(class_names)} class_names")
            ways = len(class_names)
        steps = None if steps is None else check_steps(steps)
        x = self.prepare(images, what="support images")
        classes, _ = check_labels(labels, len(x), ways=ways, min_classes=1 if one_class else 2)
        support = self._support(x, np.asarray(labels).astype(np.int64))
        names = None if class_names is None else {int(c): class_names[int(c)] for c in classes}
        # the 1-shot guard's pseudo-queries: the flipped views, through the prefix once
        few = guard and np.unique(support.labels, return_counts=True)[1].min() < 2
        views = self.support_cache(flip_width(x)) if few else None
        return self._adapt(support, names=names, steps=steps, guard=guard, views=views)

    def update(self, task: Task, images: np.ndarray | Sequence[np.ndarray],
               labels: Sequence[int] | np.ndarray, *, class_names: Sequence[str] | None = None,
               steps: int | None = None, guard: bool | Sequence[int] = False) -> Task:
        """``task`` adapted again with more support images: new classes or more shots of known
        ones, without the old images (the task's cache). Equals :meth:`adapt` on the union.

        ``class_names``: names of the classes in ``labels`` (label i -> class_names[i]) when the
        task has names; a known label must keep its name.
        """
        support = self._task_support(task)
        x = self.prepare(images, what="support images")
        check_labels(labels, len(x), min_classes=1)  # e.g. more shots of one known class
        new = np.asarray(labels).astype(np.int64)
        names = merged_class_names(task, new, class_names)
        merged = support.concat(self._support(x, new))
        return self._adapt(merged, names=names, steps=steps, guard=guard)

    def remove(self, task: Task, classes: Iterable[int], *, steps: int | None = None) -> Task:
        """``task`` adapted again without the support images of ``classes`` (caller's ids)."""
        support = self._task_support(task)
        drop = {int(c) for c in classes}
        unknown = sorted(drop - {int(c) for c in task.classes})
        if unknown:
            raise DataError(f"classes {unknown[:5]} are not in the task (it has "
                            f"{task.classes[:10].tolist()})")
        keep = ~np.isin(support.labels, list(drop))
        if not keep.any():
            raise DataError("removing every class leaves an empty task; adapt a new one instead")
        left = np.unique(support.labels[keep])
        if len(left) == 1 and task.ways > 1:
            raise DataError(f"removing {sorted(drop)} leaves one class ({int(left[0])}); a one-class "
                            "task needs Session.adapt(..., one_class=True) and predict(reject=...)")
        names = None if task.class_names is None else {
            int(c): n for c, n in zip(task.classes, task.class_names, strict=True) if int(c) not in drop}
        return self._adapt(support.select(keep), names=names, steps=steps)

    # -- adaptation from a support cache --------------------------------------------------------
    def adapt_support(self, support: Support, *, class_names: dict[int, str] | None = None,
                      steps: int | None = None, guard: bool | Sequence[int] = False,
                      views: dict[str, np.ndarray] | None = None) -> Task:
        """Adapt from a support cache (:meth:`support_cache` of preprocessed images, with the
        caller's labels): for an app that keeps the prefix activations of images it has seen.

        ``views``: ``support_cache(flip_width(x))`` of the same images (row for row), what the
        guard scores with when some class has 1 shot (:mod:`edgeflow.runtime.guard`)."""
        if views is not None and (set(views) != set(support.cache) or any(
                len(v) != len(support.labels) for v in views.values())):
            raise DataError(f"views must be support_cache(flip_width(x)) of the support images: "
                            f"the same tensors, one row per image ({len(support.labels)})")
        return self._adapt(support, names=class_names, steps=steps, guard=guard, views=views)

    def cached_features(self, cache: dict[str, np.ndarray], theta: np.ndarray) -> np.ndarray:
        """Features (N, D) at ``theta`` of images known by their :meth:`support_cache`."""
        return self._suffix(cache, np.asarray(theta, np.float32), "features")[0]

    def _support(self, x: np.ndarray, labels: np.ndarray) -> Support:
        return Support(cache=self.support_cache(x), labels=labels)

    def _adapt(self, support: Support, *, names: dict[int, str] | None,
               steps: int | None, guard: bool | Sequence[int] = False,
               views: dict[str, np.ndarray] | None = None) -> Task:
        steps = None if steps is None else check_steps(steps)
        classes, ep = np.unique(support.labels, return_inverse=True)
        ep = ep.astype(np.int64)
        w = len(classes)
        cache = support.cache
        # one support pass at theta0: the prototypes for z and the means re-centring reads
        if self.recenter or self.drift_stats or (guard and self.guard_alpha):
            feats, means = self._suffix(cache, self.theta0, "features", "theta_means")
        else:
            (feats,), means = self._suffix(cache, self.theta0, "features"), None
        protos = prototypes(feats, ep, w)
        theta, mode, guarded = self.theta0, "prototypes-at-theta0", None
        few = np.bincount(ep, minlength=w).min() < 2
        if guard and (not few or views is not None):
            theta, feats, guarded = run_guard(self, cache, ep, w, feats, means, steps, guard,
                                              views=views if few else None)
            mode = f"guard:{guarded['chosen']}"
        else:
            if guard:  # 1 shot and only the cache (update, adapt_support): no views to score with
                guarded = {"mode": None, "chosen": None,
                           "why": "1 shot in a class and no flipped views (adapt from the images, "
                                  "or pass views=); the bundle's own move"}
            n = self.steps if steps is None else steps
            if self.bundle.has_drift and n > 0:
                theta = drift_path(self, cache, ep, w, feats, means, n)[-1]
                mode = "hyperflow"
            if self.recenter:  # the re-centring move adds to the drift's (IntegratorSettings)
                theta = theta + recenter_move(self.theta0, means, alpha=self.recenter)
                mode = mode if mode == "hyperflow" else "recenter"
            if theta is not self.theta0:
                theta = theta.astype(np.float32)
                (feats,) = self._suffix(cache, theta, "features")
        protos = prototypes(feats, ep, w).astype(np.float32)
        stats = openset_fit(feats, ep, w, self._similarity)
        info = {"mode": mode, "shots": np.bincount(ep, minlength=w).tolist(),
                "steps": self.steps if steps is None else steps, "method": self.method,
                "recenter": self.recenter, "loop_every": self.loop_every,
                "backend": self.backend, "precision": self.precision,
                "support_bytes_per_image": support.bytes_per_image()}
        if guarded is not None:
            info["guard"] = guarded
        class_names = None if names is None else tuple(names[int(c)] for c in classes)
        return Task(theta=_frozen(theta), prototypes=_frozen(protos), classes=_frozen(classes),
                    bundle=self.bundle.fingerprint, class_names=class_names, info=info,
                    support=support.frozen(), openset=stats)

    def _similarity(self, query: np.ndarray, protos: np.ndarray) -> np.ndarray:
        return prototype_logits(query, protos, metric=self.metric, scale=self.scale)

    def _task_support(self, task: Task) -> Support:
        if not isinstance(task, Task):
            raise DataError(f"task must be a Task (from Session.adapt or Task.load), got "
                            f"{type(task).__name__}")
        task.check_fits(fingerprint=self.bundle.fingerprint, theta_size=self.bundle.theta_size,
                        feature_dim=self.feature_dim)
        if task.support is None:
            raise DataError("this task keeps no support cache (made by an older EdgeFlow); adapt it "
                            "again from its images to let it grow")
        want = ({o.name for o in self.runners["backbone_prefix"].outputs} if self.split
                else {"images"})  # the names support_cache produces, without running it
        if set(task.support.cache) != want:
            raise DataError("this task's support cache was made by another backend or precision of "
                            "this bundle; update it with the Session that adapted it")
        return task.support

    def logits(self, images: np.ndarray | Sequence[np.ndarray], task: Task) -> np.ndarray:
        """Raw prototype scores (Q, W) of query images (columns follow ``task.classes``)."""
        if not isinstance(task, Task):
            raise DataError(f"task must be a Task (from Session.adapt or Task.load), got "
                            f"{type(task).__name__}")
        task.check_fits(fingerprint=self.bundle.fingerprint, theta_size=self.bundle.theta_size,
                        feature_dim=self.feature_dim)
        x = self.prepare(images, what="query images")
        return prototype_logits(self.features(x, task.theta), task.prototypes, metric=self.metric,
                                scale=self.scale)

    def predict(self, images: np.ndarray | Sequence[np.ndarray], task: Task, *,
                reject: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(labels (Q,) in the caller's label ids, scores (Q, W) softmax probabilities).

        ``reject``: a target recall of the known classes (e.g. 0.95); a query whose known-class
        score falls below the threshold that the support set's own leave-one-out scores give for
        that recall gets label ``UNKNOWN`` (-1): "none of these" (:mod:`edgeflow.runtime.openset`).
        """
        logits = self.logits(images, task)
        labels = task.classes[np.argmax(logits, axis=1)]
        if reject is None and task.ways == 1:
            raise DataError("a one-class task names every image as its class; predict with "
                            "reject=RECALL (e.g. 0.95) to get 'unknown' for the others")
        if reject is not None:
            stats = self._stats(task)
            labels = np.where(stats.score(logits) < stats.threshold(float(reject)), UNKNOWN, labels)
        return labels, softmax(logits)

    def known_scores(self, images: np.ndarray | Sequence[np.ndarray], task: Task) -> np.ndarray:
        """How well each query fits its best class (Q,): its best prototype similarity; higher is
        more "known". ``predict(reject=r)`` compares it with the task's threshold for r."""
        return self._stats(task).score(self.logits(images, task))

    @staticmethod
    def _stats(task: Task) -> OpenSetStats:
        if task.openset is None:
            raise DataError("this task has no open-set statistics (made by an older EdgeFlow); adapt "
                            "it again to use rejection")
        return task.openset
