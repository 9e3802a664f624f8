//! What the kernel shows of the machine, read once for both crates: the mount table
//! ([`mountinfo`]), block devices in sysfs ([`sysfs`]) and random bytes ([`random`]). firstboot's
//! storage step and imagebuild's write-target checks both use them.

pub mod mountinfo;
pub mod random;
pub mod sysfs;
