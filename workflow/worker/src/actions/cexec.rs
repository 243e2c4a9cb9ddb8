//! `cexec`: runs a command, in a chroot of the installed system or not.
//! Environment: BLOCK_DEVICE, FS_TYPE, CHROOT, DEFAULT_INTERPRETER, CMD_LINE, as Tinkerbell's
//! cexec reads them.
use std::{os::unix::process::CommandExt, process::Command};

use super::{
    container_environment, fail, mount::Mounted, run_command, ActionResult, Invocation, Succeeded,
};

pub fn run(invocation: &Invocation) -> ActionResult<Succeeded> {
    let command_line = invocation.required("CMD_LINE")?;
    // `DEFAULT_INTERPRETER: "/bin/sh -c"` runs CMD_LINE as one argument of the interpreter;
    // without one, as Tinkerbell's cexec, CMD_LINE is commands separated by `;`, each split on
    // whitespace into a program and its arguments, run in turn until one fails.
    let commands: Vec<Vec<String>> = match invocation.optional("DEFAULT_INTERPRETER") {
        Some(interpreter) => vec![interpreter
            .split_whitespace()
            .map(str::to_string)
            .chain(std::iter::once(command_line.to_string()))
            .collect()],
        None => command_line
            .split(';')
            .map(|command| command.split_whitespace().map(str::to_string).collect())
            .filter(|argv: &Vec<String>| !argv.is_empty())
            .collect(),
    };
    if commands.is_empty() {
        return Err(fail("CMD_LINE is empty"));
    }
    // Tinkerbell's cexec chroots for any value of CHROOT, `false` too.
    let mounted = if invocation.optional("CHROOT").is_some() {
        let device = invocation.required("BLOCK_DEVICE")?;
        let fs_type = invocation.required("FS_TYPE")?;
        let mut mounted = Mounted::device(device, fs_type)?;
        mounted.bind_system()?;
        Some(mounted)
    } else {
        None
    };
    let mut messages = Vec::new();
    for argv in &commands {
        let (program, arguments) = argv
            .split_first()
            .ok_or_else(|| fail("CMD_LINE is empty"))?;
        let mut command = Command::new(program);
        command.args(arguments);
        container_environment(&mut command, invocation);
        if let Some(mounted) = &mounted {
            let root = mounted.root.clone();
            // SAFETY: chroot and chdir are async-signal-safe and touch no memory of the parent.
            unsafe {
                command.pre_exec(move || {
                    nix::unistd::chroot(&root)?;
                    nix::unistd::chdir("/")?;
                    Ok(())
                });
            }
        }
        let what = if commands.len() == 1 {
            format!("{command_line:?}")
        } else {
            format!("{:?}", argv.join(" "))
        };
        messages.push(run_command(invocation, &mut command, &what)?);
    }
    Ok(Succeeded::Done(messages.join("; ")))
}
