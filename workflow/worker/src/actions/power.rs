//! `reboot` and `kexec`. Both act only after the agent has reported the action's success: a
//! machine that reboots first could never say so.
//! kexec's environment: BLOCK_DEVICE, FS_TYPE, KERNEL_PATH, INITRD_PATH, CMD_LINE.
use std::{ffi::CString, os::fd::AsRawFd};

use super::{fail, mount::Mounted, ActionResult, Invocation, Succeeded};

/// Loads the installed system's kernel with kexec_file_load; [`restart`] starts it.
pub fn load_kexec(invocation: &Invocation) -> ActionResult<Succeeded> {
    let device = invocation.required("BLOCK_DEVICE")?;
    let fs_type = invocation.required("FS_TYPE")?;
    let kernel_path = invocation.required("KERNEL_PATH")?;
    let command_line = invocation.optional("CMD_LINE").unwrap_or("");
    let mounted = Mounted::device(device, fs_type)?;
    let kernel = mounted.open(kernel_path)?;
    let initrd = invocation
        .optional("INITRD_PATH")
        .map(|path| mounted.open(path))
        .transpose()?;
    let command_line = CString::new(command_line).map_err(|_| fail("CMD_LINE holds a NUL byte"))?;
    const KEXEC_FILE_NO_INITRAMFS: libc::c_ulong = 4;
    // SAFETY: the descriptors and the NUL-terminated command line outlive the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd.as_ref().map_or(-1, AsRawFd::as_raw_fd),
            command_line.as_bytes_with_nul().len(),
            command_line.as_ptr(),
            if initrd.is_some() {
                0
            } else {
                KEXEC_FILE_NO_INITRAMFS
            },
        )
    };
    if result != 0 {
        return Err(fail(format!(
            "kexec_file_load of {kernel_path}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(Succeeded::Kexec)
}

/// Restarts the machine, into the kexec-loaded kernel when there is one. Only returns on
/// failure.
pub fn restart(kexec: bool) -> std::io::Error {
    nix::unistd::sync();
    let how = if kexec {
        nix::sys::reboot::RebootMode::RB_KEXEC
    } else {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    };
    match nix::sys::reboot::reboot(how) {
        Err(err) => err.into(),
        Ok(never) => match never {},
    }
}
