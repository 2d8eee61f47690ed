# bash completion for postino(1)                         -*- shell-script -*-
# Installed as share/bash-completion/completions/postino.

_postino_presets()
{
    local d f dirs=()
    [[ -n ${POSTINO_PLANS_DIR-} ]] && dirs+=("$POSTINO_PLANS_DIR")
    dirs+=("${XDG_CONFIG_HOME:-$HOME/.config}/postino/plans")
    dirs+=(/usr/local/share/postino/plans /usr/share/postino/plans)
    for d in "${dirs[@]}"; do
        for f in "$d"/*.ini; do
            [[ -f $f ]] || continue
            f=${f##*/}
            f=${f%.ini}
            [[ $f == example* ]] && continue
            printf '%s\n' "$f"
        done
    done
}

_postino()
{
    local cur prev words cword
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    words=("${COMP_WORDS[@]}")
    cword=$COMP_CWORD

    local commands="plan copy mirror verify status batch"
    local common="--state --ca-file --passfile1 --passfile2 --passcmd1
        --passcmd2 --auth --auth1 --auth2 --folder --exclude --map --into
        --timeout --trace --log --verbose --quiet --job --preset --help"
    local copyopts="--dry-run --no-flag-sync --skip-duplicates --delete-after
        --keep-days --mark-seen --no-header-date --batch --jobs"
    local mirroropts="--max-delete --max-delete-percent --force --watch
        --interval --batch"
    local verifyopts="--deep --json"
    local batchopts="--jobs --jobs-per-account --out --shard --json --report
        --quiet --help --ca-file --preset --auth --auth1 --auth2 --folder
        --exclude --map --into --dry-run --no-flag-sync --skip-duplicates
        --batch --timeout --max-messages-per-second --max-bytes-per-second
        --delete-after --keep-days --mark-seen --no-header-date --verbose
        --trace"

    if ((cword == 1)); then
        COMPREPLY=($(compgen -W "$commands --help --version" -- "$cur"))
        return
    fi

    case $prev in
        --state | --ca-file | --passfile1 | --passfile2 | --log | --report)
            COMPREPLY=($(compgen -f -- "$cur"))
            return
            ;;
        --out)
            COMPREPLY=($(compgen -d -- "$cur"))
            return
            ;;
        --auth | --auth1 | --auth2)
            COMPREPLY=($(compgen -W "plain login cram-md5 xoauth2" -- "$cur"))
            return
            ;;
        --job)
            COMPREPLY=($(compgen -f -X '!*.ini' -- "$cur") $(compgen -d -- "$cur"))
            return
            ;;
        --preset)
            COMPREPLY=($(compgen -W "$(_postino_presets)" -- "$cur"))
            return
            ;;
        --passcmd1 | --passcmd2)
            COMPREPLY=($(compgen -c -- "$cur"))
            return
            ;;
        --folder | --exclude | --map | --into | --timeout | --batch | --jobs | \
        --keep-days | --interval | --max-delete | --max-delete-percent | \
        --shard | --jobs-per-account)
            return
            ;;
    esac

    if [[ $cur == -* ]]; then
        local opts
        case ${words[1]} in
            plan | copy) opts="$common $copyopts" ;;
            mirror) opts="$common $mirroropts" ;;
            verify) opts="$common $verifyopts" ;;
            batch) opts="$batchopts" ;;
            status) opts="--state --help" ;;
            *) opts="--help" ;;
        esac
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi
    # URLs: offer the schemes
    case ${words[1]} in
        plan | copy | mirror | verify)
            COMPREPLY=($(compgen -W "imaps:// imap:// pop3s:// pop3://" -- "$cur"))
            compopt -o nospace 2>/dev/null
            ;;
        batch)
            COMPREPLY=($(compgen -f -X '!*.csv' -- "$cur") $(compgen -d -- "$cur"))
            ;;
    esac
} &&
    complete -F _postino postino

# ex: filetype=sh
