"""Plain Pyro programs as models and guides: sites are found by tracing, not declared.

Any Pyro model program p(z) p(x|z), called as ``model(x)``, is a model here: a function, a bound
method (``vae.model`` in Pyro's VAE tutorial) or an ``nn.Module`` whose ``forward`` is the model.
Any Pyro guide program ``guide(x)`` is a guide. :class:`ProgramModel` and :class:`ProgramGuide`
wrap them in the library's contracts:

* **Sites are found.** The program is traced on two small batches of different sizes. The data
  plate is the plate whose size follows the batch (or the one named ``data_plate=``); every
  unobserved sample site is a latent site, with its name, event shape, support and whether it
  is discrete; the observed sites are the likelihood. A latent outside the data plate (a global
  latent) is refused, naming the site: a per-point log p(x) needs every latent local to a point.
* **Parameters live with the pair.** Parameters the program registers with ``pyro.module`` or
  ``pyro.param`` are held by the wrapper, never by Pyro's global param store: a messenger
  intercepts every ``param`` statement while the program runs. A module's own parameters are
  used as they are (so the user's network is trained in place); a ``pyro.param`` gets an
  unconstrained ``nn.Parameter`` in the wrapper. A model and its guide share one such scope
  (a name means one parameter within the pair, as in Pyro), and two pairs never share one, so
  two pairs in one process cannot interfere through the global store. The parameters are in
  the wrapper's ``state_dict``, so checkpoints, resume and run folders hold them.
* **Densities come from Pyro's own semantics.** Training and scoring run the programs through
  the library's scoring messengers (:func:`~pyro_genmod.densities.log_densities`), which add the
  same scaled and masked log-densities as ``Trace_ELBO``; a guide site without ``rsample``
  makes the training objective fall back to Pyro's ``Trace_ELBO``.

``as_model(obj, data)`` and ``as_guide(obj, model)`` return the wrapper for a program (the same
wrapper each time for the same program, so ``fit`` then ``log_likelihood`` see one set of
parameters) and pass the library's own models and guides through unchanged.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn
from torch.distributions import constraints, transform_to

from .checks import check_points, check_roles
from .errors import ConfigError, DataError, PairingError
from .latents import LatentSite, check_pair
from .seeding import seeded

__all__ = ["ParamScope", "ProgramModel", "ProgramGuide", "ProgramSites", "as_model", "as_guide", "is_program",
           "trace_sites", "is_source", "load_source", "source_record"]


class ParamScope(nn.Module):
    """The parameters of one model/guide pair, filled by the programs' ``param`` statements.

    ``pyro.module(name, net)`` registers ``net``'s own parameters (used as they are, so the
    network trains in place); ``pyro.param(name, init, constraint)`` creates an unconstrained
    ``nn.Parameter`` here and returns its constrained value, as Pyro's param store does.
    After :meth:`freeze`, a parameter appearing for the first time is an error: the optimizer
    was built over the parameters seen while tracing.
    """

    def __init__(self):
        super().__init__()
        self.params = nn.ParameterDict()
        self._names: dict[str, str] = {}  # Pyro name -> key in self.params
        self._external: dict[str, nn.Parameter] = {}  # Pyro name -> a module's own parameter
        self._constraints: dict[str, constraints.Constraint] = {}
        self.frozen = False
        self.owned: Callable[[], set[int]] = set  # ids of parameters a registered program module holds

    def get(self, name: str, init=None, constraint: constraints.Constraint = constraints.real) -> Tensor:
        if name in self._external:
            return self._external[name]
        if name in self._names:
            raw = self.params[self._names[name]]
            return raw if self._constraints[name] is constraints.real else transform_to(self._constraints[name])(raw)
        if self.frozen:
            raise ConfigError(
                f"the program registered parameter '{name}' only after it was traced, so the optimizer "
                f"does not hold it; register every parameter on every call (e.g. pyro.module at the top)"
            )
        if init is None:
            raise ConfigError(f"pyro.param('{name}') has no initial value and is not registered yet")
        value = init() if callable(init) and not isinstance(init, Tensor) else init
        if not isinstance(value, Tensor):
            value = torch.as_tensor(value, dtype=torch.get_default_dtype())
        if isinstance(value, nn.Parameter) and constraint is constraints.real:
            # a network's own parameter (pyro.module): keep the object, so the network trains in place
            if id(value) not in self.owned():
                key = self._key(name)
                self.params[key] = value
                self._names[name], self._constraints[name] = key, constraint
            else:
                self._external[name] = value
            return value
        key = self._key(name)
        with torch.no_grad():
            raw = transform_to(constraint).inv(value.detach().clone())
        self.params[key] = nn.Parameter(raw)
        self._names[name], self._constraints[name] = key, constraint
        return self.get(name)

    def _key(self, name: str) -> str:
        key = name.replace(".", "/") or "_"
        if key in self.params:
            raise ConfigError(f"parameter names '{name}' and another one map to the same key '{key}'; rename one")
        return key

    def freeze(self) -> None:
        self.frozen = True

    def scope(self) -> _ParamMessenger:
        return _ParamMessenger(self)


class _ParamMessenger(Messenger):
    """Answers every ``pyro.param`` (and so ``pyro.module``) statement from a :class:`ParamScope`."""

    def __init__(self, params: ParamScope):
        super().__init__()
        self.params = params

    def _pyro_param(self, msg) -> None:
        args = msg["args"]
        init = args[1] if len(args) > 1 else None
        constraint = msg["kwargs"].get("constraint", constraints.real)
        msg["value"] = self.params.get(args[0], init, constraint)
        msg["done"] = True


def _program_module(fn) -> nn.Module | None:
    """The ``nn.Module`` a program belongs to: itself, or the object of a bound method."""
    if isinstance(fn, nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _describe(fn) -> str:
    if isinstance(fn, nn.Module):
        return type(fn).__name__
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


class ProgramSites:
    """What tracing a program found: the data plate, latent sites and observed sites."""

    def __init__(self, data_plate: str, latent: tuple[LatentSite, ...], observed: dict[str, tuple[int, ...]]):
        self.data_plate, self.latent, self.observed = data_plate, latent, observed


def _plates(trace) -> dict[str, tuple[int, int]]:
    found = {}
    for node in trace.nodes.values():
        for frame in node.get("cond_indep_stack", ()):
            if frame.vectorized and frame.name is not None:
                found[frame.name] = (frame.size, frame.dim)
    return found


def _support(fn) -> constraints.Constraint:
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def trace_sites(run: Callable[[Tensor], object], x: Tensor, what: str, data_plate: str | None = None) -> ProgramSites:
    """Trace ``run`` on two batches of ``x`` (sizes 2 and 3, or 1) and read its sites.

    The global RNG is left as it was; nothing is recorded outside (``poutine.block``).
    """
    sizes = [n for n in (2, 3) if n <= x.shape[0]] or [1]
    traces = []
    with seeded(0), torch.no_grad():
        for n in sizes:
            with poutine.block():
                try:
                    traces.append(poutine.trace(run).get_trace(x[:n]))
                except (ConfigError, DataError, PairingError):
                    raise
                except Exception as error:  # the user's code: say where it failed, in one line
                    first = str(error).splitlines()[0] if str(error) else ""
                    raise ConfigError(
                        f"{what} failed when called on a batch of {n} data point(s) of shape "
                        f"{tuple(x.shape[1:])}: {type(error).__name__}: {first}"
                    ) from error
    plates = [_plates(t) for t in traces]
    if data_plate is None:
        candidates = [
            name for name, (size, _) in plates[-1].items()
            if all(p.get(name, (None,))[0] == n for p, n in zip(plates, sizes))
        ]
        if len(sizes) == 1:  # one point only: any plate of size 1 in the program
            candidates = [name for name, (size, _) in plates[0].items() if size == 1]
        if not candidates:
            raise ConfigError(
                f"{what} has no plate over the data points: put its per-point sites inside "
                f"pyro.plate('data', x.shape[0]) (found plates: {sorted(plates[-1]) or 'none'})"
            )
        if len(candidates) > 1:
            raise ConfigError(
                f"{what} has several plates whose size is the batch size ({', '.join(sorted(candidates))}); "
                f"name the data plate with data_plate=..."
            )
        data_plate = candidates[0]
    elif data_plate not in plates[-1]:
        raise ConfigError(f"{what} has no plate named '{data_plate}' (its plates: {sorted(plates[-1]) or 'none'})")
    n = sizes[-1]
    size, dim = plates[-1][data_plate]
    if size != n:
        raise ConfigError(f"{what}: plate '{data_plate}' has size {size}, not the batch size {n}; it cannot be the data plate")
    if dim != -1:
        raise ConfigError(
            f"{what}: the data plate '{data_plate}' is at dim {dim}; per-point scoring needs it at dim -1 "
            f"(put other plates outside it, or use .to_event for dimensions within a point)"
        )
    latent, observed = [], {}
    for name, node in traces[-1].nodes.items():
        if node["type"] != "sample" or site_is_subsample(node):
            continue
        stack = [f.name for f in node["cond_indep_stack"]]
        kind = "observed site" if node["is_observed"] else "latent site"
        if data_plate not in stack:
            raise ConfigError(
                f"{what}: {kind} '{name}' is outside the data plate '{data_plate}' (a global "
                f"{'latent' if not node['is_observed'] else 'observation'}); a per-point log p(x) needs every "
                f"site local to a data point: move it inside the plate, or make it a parameter with pyro.param"
            )
        fn = node["fn"]
        if tuple(fn.batch_shape) != (n,):
            raise ConfigError(
                f"{what}: {kind} '{name}' has batch shape {tuple(fn.batch_shape)} inside the data plate; "
                f"each data point must be one draw: use .to_event(...) for the dimensions within a point"
            )
        if node["is_observed"]:
            observed[name] = tuple(node["value"].shape[1:])
        else:
            support = _support(fn)
            latent.append(LatentSite(name, tuple(fn.event_shape), support, discrete=bool(support.is_discrete)))
    if not observed and what.startswith("model"):
        raise ConfigError(f"{what} observes nothing: give the likelihood site obs=x")
    return ProgramSites(data_plate, tuple(latent), observed)


class _Program(nn.Module):
    """Shared by :class:`ProgramModel` and :class:`ProgramGuide`: runs ``fn`` in a parameter scope."""

    def _wrap(self, fn, params: ParamScope, partner: nn.Module | None = None) -> None:
        """Run ``fn`` in ``params``. What ``partner`` (the pair's model) already holds, the
        program's module or the shared scope, is referenced, not registered again, so the
        pair's state dicts hold each tensor once."""
        if not callable(fn):
            raise ConfigError(f"a Pyro program must be callable as program(x), got {type(fn).__name__}")
        module = _program_module(fn)
        held = {id(m) for m in partner.modules()} if partner is not None else set()
        if module is not None and id(module) not in held:
            self.program_module = module  # registered: its parameters and buffers move and save with us
        elif module is not None:
            object.__setattr__(self, "program_module", module)
        object.__setattr__(self, "fn", fn)
        if id(params) in held:
            object.__setattr__(self, "params", params)
        else:
            self.params = params
        owned = params.owned

        def owned_now() -> set[int]:  # every program module of the pair holds its own parameters
            return owned() | ({id(p) for p in module.parameters()} if module is not None else set())

        params.owned = owned_now
        self.registry_name = _describe(fn)

    def _run(self, *args, **kwargs):
        with self.params.scope():
            return self.fn(*args, **kwargs)


class ProgramModel(_Program):
    """A plain Pyro model program as a :class:`~pyro_genmod.models.base.GenerativeModel`.

    Arguments:
        fn: the model, called as ``fn(x)``: a function, a bound method or an ``nn.Module``.
        data: a :class:`~pyro_genmod.data.Dataset` or a tensor of data points to trace it on.
        data_plate: the name of the plate over data points, if tracing cannot tell.
        name: how the model is named in messages and run folders.
    """

    max_plate_nesting = 1
    uses_labels = False
    allows_missing_labels = False
    num_classes = 0
    has_log_likelihood = True
    is_program = True
    source: dict | None = None  # where the program came from, when it was named by file or module
    source_module = None

    def __init__(self, fn, data, data_plate: str | None = None, name: str | None = None):
        super().__init__()
        x = _points(data)
        self.data_shape = tuple(int(d) for d in x.shape[1:])
        self.init_kwargs: dict = {}
        self._wrap(fn, ParamScope())
        what = f"model '{name or self.registry_name}'"
        found = trace_sites(self._run, x, what, data_plate)
        self.params.freeze()
        self.data_plate, self.latent_sites, self.observed_sites = found.data_plate, found.latent, found.observed
        if name:
            self.registry_name = name
        if not self.latent_sites:
            raise ConfigError(f"{what} has no latent site: nothing for a guide to infer")

    def forward(self, x: Tensor | None = None, *args, **kwargs):
        if x is None:
            raise ConfigError(
                f"model '{self.registry_name}' is a Pyro program called as model(x); draw new points with "
                f"pg.sample(model, n), which runs it on placeholder data with the observations unconditioned"
            )
        return self._run(x, *args, **kwargs)

    def validate_data(self, x: Tensor, what: str = "data") -> None:
        check_points(x, self.data_shape, self.registry_name, what)

    def _observation(self, num: int, run) -> dict:
        if len(self.observed_sites) != 1:
            raise ConfigError(
                f"model '{self.registry_name}' observes {len(self.observed_sites)} sites "
                f"({', '.join(self.observed_sites)}); sampling or decoding points needs exactly one"
            )
        (site,) = self.observed_sites
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        placeholder = torch.zeros(num, *self.data_shape, device=device)
        return poutine.trace(poutine.uncondition(run)).get_trace(placeholder).nodes[site]

    def decode(self, latents: dict[str, Tensor], mean: bool = True) -> Tensor:
        """E[x | z] (or a draw of x) for latent values of shape ``(S, N, *event_shape)``:
        the program run with its latents fixed, shape ``(S, N, *data_shape)``."""
        first = next(iter(latents.values()))
        count, num = first.shape[0], first.shape[1]
        with pyro.plate("decode_draws", count, dim=-2):
            node = self._observation(num, poutine.condition(self._run, data=latents))
        value = node["fn"].mean if mean else node["value"]
        return value.reshape(count, num, *self.data_shape)

    def sample_points(self, num: int, mean: bool = False) -> Tensor:
        """``num`` new points: the program run on placeholder data with its observations sampled
        (``mean=True``: the mean of the observation distribution at each prior draw)."""
        node = self._observation(num, self._run)
        return (node["fn"].mean if mean else node["value"]).reshape(num, *self.data_shape)


class ProgramGuide(_Program):
    """A plain Pyro guide program as a guide for ``model`` (sharing the pair's parameter scope).

    Its sample sites must be exactly the model's latent sites (name, shape, support); they are
    checked when the guide is built, before any training.
    """

    is_point_estimate = False
    scores_own_samples_only = False
    is_program = True

    def __init__(self, fn, model, data=None, name: str | None = None):
        super().__init__()
        model = as_model(model, data)
        self.data_shape = tuple(model.data_shape)
        self.init_kwargs: dict = {}
        params = model.params if isinstance(model, ProgramModel) else ParamScope()
        was_frozen = params.frozen
        params.frozen = False
        self._wrap(fn, params, partner=model if isinstance(model, nn.Module) else None)
        if name:
            self.registry_name = name
        x = _points(data) if data is not None else torch.zeros(3, *self.data_shape)
        what = f"guide '{self.registry_name}'"
        found = trace_sites(self._run, x, what, getattr(model, "data_plate", "data"))
        params.frozen = was_frozen or isinstance(model, ProgramModel)
        self.data_plate, self.latent_sites = found.data_plate, found.latent
        check_pair(model, self)
        self.takes_labels = "y" in _parameters(fn)

    def forward(self, x: Tensor, *args, **kwargs):
        return self._run(x, *args, **kwargs)


def _parameters(fn) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _points(data) -> Tensor:
    """The points to trace a program on: a dataset's training points, or a tensor of points."""
    x = getattr(data, "train", data)
    if not isinstance(x, Tensor):
        raise ConfigError(
            f"tracing a Pyro program needs data: pass a Dataset or a tensor of points, got {type(data).__name__}"
        )
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"the data to trace the program on must be a non-empty batch of points, got shape {tuple(x.shape)}")
    if getattr(data, "binarization", None) == "dynamic":
        x = torch.bernoulli(x[:3].clamp(0, 1), generator=torch.Generator().manual_seed(0))
    return x[:3] if x.is_floating_point() else x[:3].to(torch.get_default_dtype())


def is_program(obj) -> bool:
    """Whether ``obj`` is a plain Pyro program rather than an object of the library's contracts
    (which know their ``latent_sites``: the zoo's models and guides, and these wrappers)."""
    return callable(obj) and not isinstance(obj, Tensor) and not hasattr(obj, "latent_sites")


# One wrapper per program, so that fit, log_likelihood and create_guide share its parameters.
_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_GUIDES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cache_key(fn):
    """A bound method is recreated at each attribute access: key it by its object and name."""
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, type):
        try:
            weakref.ref(owner)
            return owner, fn.__func__.__name__
        except TypeError:
            return None
    try:
        weakref.ref(fn)
        return fn, None
    except TypeError:
        return None


def _lookup(table, fn, extra):
    key = _cache_key(fn)
    return None if key is None else table.get(key[0], {}).get((key[1], extra))


def _store(table, fn, extra, wrapper):
    key = _cache_key(fn)
    if key is not None:
        table.setdefault(key[0], {})[(key[1], extra)] = wrapper
    return wrapper


def as_model(model, data=None, data_plate: str | None = None):
    """The library's model for ``model``: itself if it is one, else the :class:`ProgramModel` of a
    Pyro program (traced on ``data`` the first time; the same wrapper for the same program after).
    A guide passed as the model (arguments swapped) is refused with a :class:`ConfigError`."""
    check_roles(model=model)
    if not is_program(model):
        if not callable(model) or isinstance(model, Tensor):
            raise ConfigError(f"a model must be a Pyro program called as model(x), got {type(model).__name__}")
        return model
    wrapper = _lookup(_MODELS, model, None)
    if wrapper is None:
        if data is None:
            raise ConfigError(
                f"'{_describe(model)}' is a Pyro program the library has not traced yet; pass data "
                f"(e.g. pg.create_guide(name, model, data)) or wrap it first with pg.ProgramModel(model, data)"
            )
        return _store(_MODELS, model, None, ProgramModel(model, data, data_plate))
    if data is not None:
        shape = tuple(_points(data).shape[1:])
        if shape != wrapper.data_shape:
            raise DataError(
                f"model '{wrapper.registry_name}' was traced on points of shape {wrapper.data_shape}, "
                f"this data has shape {shape}; wrap it again with pg.ProgramModel(model, data)"
            )
    return wrapper


def as_guide(guide, model=None, data=None):
    """The library's guide for ``guide``: itself if it is one, else the :class:`ProgramGuide` of a
    Pyro guide program for ``model`` (without ``model``: the one built before for this program).
    A model passed as the guide (arguments swapped) is refused with a :class:`ConfigError`."""
    check_roles(guide=guide)
    if not is_program(guide):
        if not callable(guide) or isinstance(guide, Tensor):
            raise ConfigError(f"a guide must be a Pyro program called as guide(x), got {type(guide).__name__}")
        return guide
    if model is None:
        key = _cache_key(guide)
        built = list(_GUIDES.get(key[0], {}).items()) if key is not None else []
        built = [wrapper for (name, _), wrapper in built if name == key[1]]
        if len(built) != 1:
            raise ConfigError(
                f"'{_describe(guide)}' is a Pyro guide program; say which model it is for: "
                f"pg.ProgramGuide(guide, model, data), or train it with pg.fit(model, guide, data) first"
            )
        return built[0]
    model = as_model(model, data)
    return _lookup(_GUIDES, guide, id(model)) or _store(_GUIDES, guide, id(model), ProgramGuide(guide, model, data))


# --- programs named in configs and on the command line --------------------------------------


def is_source(name) -> bool:
    """Whether a model or guide name points at user code (``module:attribute`` or ``file.py:attribute``)."""
    return isinstance(name, str) and ":" in name


def source_record(spec: str) -> dict:
    """Where the program named ``spec`` comes from, as a run folder records it."""
    location, _, attribute = spec.rpartition(":")
    if location.endswith(".py"):
        path = Path(location).resolve()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        return {"spec": spec, "file": str(path), "attribute": attribute, "sha256": digest}
    return {"spec": spec, "module": location, "attribute": attribute}


_FRESH = [0]


def load_source(spec: str, record: dict | None = None, module=None):
    """Import the program named ``spec`` and return it with its module (``file.py:attr`` or
    ``module:attr``; ``attr`` may be dotted, e.g. ``vae.model``). A file is executed afresh on
    each call (unless ``module``, an earlier execution of it, is given); a module is imported
    once, as Python does. ``record`` (from a run folder) gives the file's absolute path, used
    when the relative one no longer resolves.

    This imports and runs the user's code: callers loading a run folder must have the user's
    explicit consent (``trust_code``).
    """
    location, sep, attribute = spec.rpartition(":")
    if not sep or not location or not attribute:
        raise ConfigError(f"'{spec}' does not name a program: use module:attribute or path/to/file.py:attribute")
    if module is not None:
        pass
    elif location.endswith(".py"):
        path = Path(location)
        if not path.is_file() and record and record.get("file"):
            path = Path(record["file"])
        if not path.is_file():
            raise ConfigError(f"cannot load '{spec}': file '{location}' does not exist")
        path = path.resolve()
        if record and record.get("sha256") and hashlib.sha256(path.read_bytes()).hexdigest() != record["sha256"]:
            warnings.warn(f"'{path}' changed since the run was trained; its parameters may not fit", stacklevel=2)
        _FRESH[0] += 1
        name = f"genmod_user_{path.stem}_{_FRESH[0]}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.path.insert(0, str(path.parent))  # the file may import its neighbours
        try:
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
        except Exception as error:
            sys.modules.pop(name, None)
            raise ConfigError(f"importing '{path}' failed: {type(error).__name__}: {error}") from error
        finally:
            sys.path.remove(str(path.parent))
    else:
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise ConfigError(f"cannot import module '{location}' named by '{spec}': {error}") from None
        finally:
            sys.path.remove(os.getcwd())
    value = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ConfigError(f"'{location}' has no attribute '{attribute}' (named by '{spec}')")
        value = getattr(value, part)
    if not callable(value):
        raise ConfigError(f"'{spec}' is a {type(value).__name__}, not a Pyro program called as program(x)")
    return value, module


def program_from_source(spec: str, data, record: dict | None = None, **options) -> ProgramModel:
    """The :class:`ProgramModel` of the program ``spec`` names (see :func:`load_source`); its one
    option is ``data_plate``."""
    unknown = sorted(set(options) - {"data_plate"})
    if unknown:
        raise ConfigError(
            f"model '{spec}' is a Pyro program; its only option is data_plate (got {', '.join(unknown)}): "
            f"options like latent_dim or likelihood belong to the program itself"
        )
    data_plate = options.get("data_plate")
    if isinstance(data, tuple | list) or not hasattr(getattr(data, "train", data), "shape"):
        raise ConfigError(f"model '{spec}' is a Pyro program: build it from data (a Dataset or points), not a shape")
    fn, module = load_source(spec, record)
    model = as_model(fn, data, data_plate)
    model.registry_name, model.source, model.source_module = spec, source_record(spec), module
    model.init_kwargs = {} if data_plate is None else {"data_plate": data_plate}
    return model


def guide_from_source(spec: str, model, data=None, record: dict | None = None, **options) -> ProgramGuide:
    """The :class:`ProgramGuide` of the program ``spec`` names, for ``model``; a guide in the
    file the model came from is taken from the same execution of it (so a tutorial's
    ``vae.guide`` pairs with its ``vae.model``)."""
    if options:
        raise ConfigError(f"guide '{spec}' is a Pyro program; it takes no options (got {sorted(options)})")
    same_file = (getattr(model, "source", None) or {}).get("spec", "").rpartition(":")[0] == spec.rpartition(":")[0]
    fn, _ = load_source(spec, record, module=getattr(model, "source_module", None) if same_file else None)
    guide = as_guide(fn, model, data)
    guide.registry_name, guide.source, guide.init_kwargs = spec, source_record(spec), {}
    return guide


def untrusted_source_error(spec: str, folder) -> ConfigError:
    return ConfigError(
        f"the run in '{folder}' was trained with user code '{spec}'; loading it imports and runs that "
        f"code: pass --trust-code (Python: trust_code=True) if you trust it"
    )
