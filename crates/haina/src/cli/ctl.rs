//! `haina ctl`: not yet implemented.

#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(_args: Args) -> Result<(), Box<dyn std::error::Error>> {
    Err("not implemented yet".into())
}
