"""`qpu-broker completion bash|zsh|fish`: shell completion made from the parser itself.

The command tree (commands, subcommands, options, choices) is read from the
argparse parser, so completion can never drift from the real CLI.
"""

from __future__ import annotations

import argparse

from qpu_broker.common.commands import Command


def _tree(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], list[str]]:
    """path of subcommands -> the words that may follow it (subcommands, options, choices)."""
    words: list[str] = []
    out: dict[tuple[str, ...], list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.append(name)
                out.update(_tree(child, (*path, name)))
        elif action.option_strings:
            words += [o for o in action.option_strings if o.startswith("--")]
        elif action.choices:
            words += [str(c) for c in action.choices]
    out[path] = words
    return out


def _bash(tree: dict[tuple[str, ...], list[str]]) -> str:
    cases = "\n".join(f'        "{" ".join(path)}") words="{" ".join(words)}" ;;' for path, words in sorted(tree.items()))
    return f'''# qpu-broker bash completion: source it, or install it as a bash-completion file.
_qpu_broker() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" word words i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in -*) continue ;; esac
        case " $(_qpu_broker_words "$path") " in *" $word "*) path="${{path:+$path }}$word" ;; esac
    done
    COMPREPLY=($(compgen -W "$(_qpu_broker_words "$path")" -- "$cur"))
}}
_qpu_broker_words() {{
    local words=""
    case "$1" in
{cases}
    esac
    echo "$words"
}}
complete -o default -F _qpu_broker qpu-broker
'''


def _zsh(tree: dict[tuple[str, ...], list[str]]) -> str:
    return ("# qpu-broker zsh completion (through bash's): eval \"$(qpu-broker completion zsh)\"\n"
            "(( $+functions[compdef] )) || { autoload -U +X compinit && compinit -u; }\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + _bash(tree))


def _fish(tree: dict[tuple[str, ...], list[str]]) -> str:
    lines = ["# qpu-broker fish completion: qpu-broker completion fish > ~/.config/fish/completions/qpu-broker.fish",
             "complete -c qpu-broker -f"]
    for path, words in sorted(tree.items()):
        children = [w for w in words if not w.startswith("-") and (*path, w) in tree]
        if path:
            condition = "; and ".join(f"__fish_seen_subcommand_from {p}" for p in path)
            if children:
                condition += f"; and not __fish_seen_subcommand_from {' '.join(children)}"
        else:
            condition = "__fish_use_subcommand"
        for word in words:
            if word.startswith("--"):
                lines.append(f"complete -c qpu-broker -n '{condition}' -l {word[2:]}")
            else:
                lines.append(f"complete -c qpu-broker -n '{condition}' -a {word}")
    return "\n".join(lines) + "\n"


SHELLS = {"bash": _bash, "zsh": _zsh, "fish": _fish}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    return SHELLS[shell](_tree(parser))


def _print(args: argparse.Namespace) -> None:
    from qpu_broker.cli.main import build_parser  # here: main lists this module's entry

    print(script(build_parser(), args.shell), end="")  # every command, not the one parsed


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=tuple(SHELLS), help="the shell to complete for")


COMMAND = Command("completion", "print a shell completion script",
                  "mkdir -p ~/.local/share/bash-completion/completions && "
                  "qpu-broker completion bash > ~/.local/share/bash-completion/completions/qpu-broker",
                  _print, _options)
