"""sheepfs(8), generated from the option table ``--help`` prints (:mod:`sheepfs.options`,
and :mod:`sheepfs.statuscmd` for ``sheepfs status``), so the two never disagree.

``python -m sheepfs.manpage`` writes the page (troff, man macros) to stdout; scripts/setup
installs it. Each option is shown as argparse shows it: the same names, metavars and help.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .options import _IGNORED, _O_OPTIONS, build_parser
from .statuscmd import build_parser as build_status_parser

DESCRIPTION = r"""
Every VDI (virtual disk image) of the cluster is a regular file in the mount point, so
tools that only understand paths (\fBcp\fR, \fBdd\fR, \fBrsync\fR, \fBqemu\-img\fR) can
read, write, create and delete disk images.
.PP
sheepfs speaks the sheep daemons' own protocol (Sheepdog 1.0) by default, or drives the
Sheepdog CLI (\fB\-\-backend dog\fR: \fBdog\fR, or \fBcollie\fR before 0.7) for older
clusters. It checks at start that the cluster answers and is formatted, and mounts nothing
if not.
.PP
A new file waits in the spool directory until its VDI holds it: it is created when the file
is closed (a large one is uploaded behind its writer), and errors come back from
\fBclose\fR(2). Changes to existing VDIs are cached and written back on \fBfsync\fR(2),
close, and within about 5 seconds by themselves. Unmounting (\fBfusermount3 \-u\fR) and
SIGTERM write every pending byte first; the log then says every few seconds which file is
being written and how much of it is left.
"""

STATUS = r"""
.B sheepfs status
\fIMOUNTPOINT\fR asks the daemon of a running mount, through the extended attribute
\fBuser.sheepfs.status\fR of the mount's root, and never touches a VDI, so it answers also
while the cluster does not. \fBgetfattr \-d \-m user.sheepfs\fR \fIMOUNTPOINT\fR shows the
same attributes. With \fB\-\-metrics\fR the same counters are served for Prometheus.
"""

SYSTEMD = r"""
The unit \fBsheepfs@.service\fR (an instance per escaped mount point, settings in
\fI/etc/sheepfs/INSTANCE.conf\fR) runs sheepfs in the foreground with \fBType=notify\fR:
sheepfs sends READY=1 once the mount answers, and STATUS= lines naming the pending uploads
while it stops (\fB$NOTIFY_SOCKET\fR, see \fBsd_notify\fR(3)).
"""

TAIL = r"""
.SH EXIT STATUS
0 once unmounted with every byte saved; 1 if the mount failed or some data could not be
saved (the log names the spool files that hold it).
.SH ENVIRONMENT
.TP
.B NOTIFY_SOCKET
where systemd listens for READY=1 and STATUS= (set by systemd for \fBType=notify\fR units)
.TP
.B XDG_CACHE_HOME
the default spool of a user other than root is \fI$XDG_CACHE_HOME/sheepfs\fR
.SH FILES
.TP
.I /var/cache/sheepfs
the spool of root (new files until their VDI holds them); it must be 0700 and ours
.TP
.I /etc/sheepfs/INSTANCE.conf
SHEEPFS_SOURCE and SHEEPFS_OPTIONS of the unit \fBsheepfs@INSTANCE.service\fR
.SH SEE ALSO
\fBfusermount3\fR(1), \fBmount.fuse3\fR(8), \fBfstab\fR(5), \fBgetfattr\fR(1),
\fBdog\fR(8), \fBsystemd.service\fR(5), \fBsd_notify\fR(3)
"""


def escape(text: str) -> str:
    """Text as troff prints it: backslashes and dashes kept, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.split("\n"))


def _invocation(formatter: argparse.HelpFormatter, action: argparse.Action) -> str:
    """The option's names and metavar, as ``--help`` shows them, in bold and italics."""
    names = ", ".join(f"\\fB{escape(o)}\\fR" for o in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
    return f"{names} \\fI{escape(metavar)}\\fR"


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """One ``.SS`` per group of ``parser``, one ``.TP`` per option, in --help's order."""
    formatter = parser._get_formatter()
    out: list[str] = []
    for group in parser._action_groups:
        shown = [
            a for a in group._group_actions if a.help is not argparse.SUPPRESS and a.option_strings
        ]
        if not shown:
            continue
        out.append(f".SS {escape(group.title or 'options').capitalize()}")
        for action in shown:
            out += [".TP", _invocation(formatter, action), escape(formatter._expand_help(action))]
    return out


def _mount_options(parser: argparse.ArgumentParser) -> list[str]:
    """The ``-o`` forms (mount(8), fstab): each is the long option of the same name."""
    formatter = parser._get_formatter()
    by_dest = {a.dest: a for a in parser._actions if a.option_strings}
    out = [
        ".SH MOUNT OPTIONS",
        "Every option has an \\fB\\-o\\fR form for \\fBmount\\fR(8) and \\fBfstab\\fR(5): "
        "the long name with _ for \\-.",
    ]
    for key, (dest, convert) in _O_OPTIONS.items():
        action = by_dest[dest]
        long = next(o for o in action.option_strings if o.startswith("--"))
        form = f"\\fB{escape(key)}\\fR"
        if convert is not None:
            metavar = formatter._format_args(
                action, formatter._get_default_metavar_for_optional(action)
            )
            form += f"=\\fI{escape(metavar)}\\fR"
        out += [".TP", form, f"as \\fB{escape(long)}\\fR"]
    ignored = ", ".join(sorted(_IGNORED))
    out += [".PP", f"Accepted and ignored: {escape(ignored)}. Any other is an error."]
    return out


def render() -> str:
    parser, status = build_parser(), build_status_parser()
    lines = [
        f'.TH SHEEPFS 8 "" "sheepfs {__version__}" "System Administration"',
        ".SH NAME",
        "sheepfs \\- mount a Sheepdog cluster as a directory of disk images",
        ".SH SYNOPSIS",
        ".B sheepfs",
        "[\\fISOURCE\\fR] \\fIMOUNTPOINT\\fR [\\fIoptions\\fR] [\\fB\\-o\\fR \\fIOPT\\fR[,...]]",
        ".br",
        ".B sheepfs status",
        "\\fIMOUNTPOINT\\fR [\\fB\\-\\-json\\fR] [\\fB\\-\\-timeout\\fR \\fIS\\fR]",
        ".SH DESCRIPTION",
        escape(parser.description or ""),
        ".PP",
        DESCRIPTION.strip(),
        ".SH OPTIONS",
        *_options(parser),
        *_mount_options(parser),
        ".SH STATUS",
        escape(status.description or ""),
        ".PP",
        STATUS.strip(),
        *_options(status),
        ".SH SYSTEMD",
        SYSTEMD.strip(),
        TAIL.strip(),
    ]
    return "\n".join(line for line in lines if line) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
