//! `cexec`: runs a command, in a chroot of the installed system or not.
//! Environment: BLOCK_DEVICE, FS_TYPE, CHROOT, DEFAULT_INTERPRETER, CMD_LINE.
use std::{os::unix::process::CommandExt, process::Command};

use super::{
    container_environment, fail, mount::Mounted, run_command, ActionResult, Invocation, Succeeded,
};

pub fn run(invocation: &Invocation) -> ActionResult<Succeeded> {
    let command_line = invocation.required("CMD_LINE")?;
    // `DEFAULT_INTERPRETER: "/bin/sh -c"` runs CMD_LINE as one argument of the interpreter;
    // without one, CMD_LINE is split on whitespace into a program and its arguments.
    let argv: Vec<String> = match invocation.optional("DEFAULT_INTERPRETER") {
        Some(interpreter) => interpreter
            .split_whitespace()
            .map(str::to_string)
            .chain(std::iter::once(command_line.to_string()))
            .collect(),
        None => command_line
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    };
    let (program, arguments) = argv
        .split_first()
        .ok_or_else(|| fail("CMD_LINE is empty"))?;
    let mut command = Command::new(program);
    command.args(arguments);
    container_environment(&mut command, invocation);
    let _mounted = if invocation.flag("CHROOT")? {
        let device = invocation.required("BLOCK_DEVICE")?;
        let fs_type = invocation.required("FS_TYPE")?;
        let mut mounted = Mounted::device(device, fs_type)?;
        mounted.bind_system()?;
        let root = mounted.root.clone();
        // SAFETY: chroot and chdir are async-signal-safe and touch no memory of the parent.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::chroot(&root)?;
                nix::unistd::chdir("/")?;
                Ok(())
            });
        }
        Some(mounted)
    } else {
        None
    };
    let message = run_command(invocation, &mut command, &format!("{command_line:?}"))?;
    Ok(Succeeded::Done(message))
}
