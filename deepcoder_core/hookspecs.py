"""Every hook a deepcoder plugin can implement.

All component hooks take the register-callback form: the core hands the plugin a
``register(name, factory, *, description=None)`` function and the plugin calls it once per
component (``description`` defaults to the first line of the factory's docstring; nothing
else is accepted: what a component can do is declared by its attributes, see
``protocols.py``). ``factory(**options)`` builds the component from the options of its
config section; it is called only when the component is used, so heavy imports belong
inside it. A hook that raises is recorded as its plugin's error (``deepcoder plugins``) and
its components are skipped; two plugins registering one name is an error naming both.
"""

import pluggy

hookspec = pluggy.HookspecMarker("deepcoder")


@hookspec
def register_teachers(register):
    """Register teacher models, the LLMs that solve problems as ReAct agents.

    :param register: ``register(name, factory)``; ``factory(**teacher.options)`` returns a
        :class:`deepcoder_core.protocols.Teacher` (its optional members, such as ``score``
        for white-box teachers, are listed there).
    """


@hookspec
def register_tools(register):
    """Register tools the agent calls by name (``Action: <name>`` and its input).

    :param register: ``register(name, factory)``; ``factory(**tools.options[name])`` returns a
        :class:`deepcoder_core.protocols.Tool`.
    """


@hookspec
def register_span_detectors(register):
    """Register detectors that cut text into reasoning, action, observation and answer spans.

    :param register: ``register(name, factory)``, a :class:`deepcoder_core.protocols.SpanDetector`
        factory taking ``processing.detector_options``.
    """


@hookspec
def register_losses(register):
    """Register per-token distillation divergences; the engine does chunking, temperature,
    masking, weighting and reduction around them.

    :param register: ``register(name, factory)``: ``factory(**loss.options)`` gives a
        :class:`deepcoder_core.protocols.Loss`.
    """


@hookspec
def register_weightings(register):
    """Register strategies that turn span types and training state into token weights.

    :param register: ``register(name, factory)`` for a
        :class:`deepcoder_core.protocols.Weighting` built from ``weighting.options``.
    """


@hookspec
def register_commands(cli):
    """Add subcommands to the ``deepcoder`` command line.

    :param cli: the root :class:`click.Group`; call ``cli.command()`` / ``cli.add_command()``.
        Keep imports inside the command functions so ``deepcoder --help`` stays fast.
    """
