//! imagebuild: customizes an upstream Raspberry Pi OS image into a flashable K3s node image, rootless.
//!
//! The modules follow the build pipeline: [`recipe`] and [`boards`] say what to build, [`source`]
//! fetches and caches the base, [`disk`] reads and grows the partition table, [`boot`] edits the FAT
//! boot partition, [`rootfs`] edits the ext4 root filesystem through e2fsprogs, [`payload`] adds
//! K3s and firstboot, and [`output`]
//! publishes the result atomically. [`build`] runs the whole pipeline; [`inspect`] and [`verify`]
//! look at a finished image. [`bmap`], [`flash`] and [`stamp`] write images and settings to
//! cards, with the safety checks of [`device`].

pub mod bmap;
pub mod boards;
pub mod boot;
pub mod build;
pub mod cluster;
pub mod device;
pub mod disk;
pub mod epoch;
pub mod fetch;
pub mod flash;
pub mod inspect;
pub mod interrupt;
pub mod io;
pub mod kits;
pub mod layout;
pub mod output;
pub mod payload;
pub mod progress;
pub mod recipe;
pub mod rootfs;
pub mod size;
pub mod source;
pub mod stamp;
pub mod suggest;
pub mod token;
pub mod verify;
pub mod xml;
